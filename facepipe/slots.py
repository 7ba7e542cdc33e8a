"""Training slots: one training at a time, and a killed run never blocks the next.

Each training asset claims a slot of the instance's `training` pool itself, around the training
only (a cache hit needs none), through Dagster's own concurrency storage, so the UI's pool page
shows who holds it and `dagster instance concurrency set training 2` still works. It does not
leave the claim to Dagster's executor, whose wait for a slot spins at full CPU, logs only at
DEBUG and ignores Ctrl+C and SIGTERM; here the wait sleeps, says at INFO what it waits for and
stops on Ctrl+C.

A run whose process was killed (`kill -9`, a crash, a lost machine) keeps its slot until
somebody frees it; Dagster's daemon does that only where it runs. So runs say which process runs
them (`facepipe build` tags its runs with host, pid and process start time) and which process
holds their slot (the claiming step tags the run with the same under `facepipe/slot_*`: under
Celery, steps of one run live in several processes). Whoever waits for a slot, and
`facepipe build` when it starts, frees the slots of runs of this machine whose process is gone,
marks those runs failed and says so.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import psutil
from dagster import DagsterInstance, RunsFilter
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

RUN_PROCESS = "facepipe/"  # tags of the process that runs the whole run (facepipe build)
SLOT_PROCESS = "facepipe/slot_"  # tags of the process whose step holds the run's slot
HOST, PID, PROCESS_START = "host", "pid", "process_start"  # process_start: a reused pid is another process
POLL_SECONDS = 2.0
REPEAT_WAIT_MESSAGE_S = 60.0


def process_tags(pid: int | None = None, prefix: str = RUN_PROCESS) -> dict[str, str]:
    """Tags naming a process (this one by default): host, pid, process start time."""
    process = psutil.Process(pid or os.getpid())
    return {prefix + HOST: socket.gethostname(), prefix + PID: str(process.pid),
            prefix + PROCESS_START: f"{process.create_time():.3f}"}


def process_gone(tags: dict[str, str], prefix: str = RUN_PROCESS) -> bool:
    """Whether the process the tags name is known to be gone: on this host, and no process with
    that pid and start time exists. Other hosts' processes, or no tags, are never judged."""
    if tags.get(prefix + HOST) != socket.gethostname() or prefix + PID not in tags:
        return False
    try:
        process = psutil.Process(int(tags[prefix + PID]))
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError):
        return True
    except psutil.AccessDenied:
        return False
    recorded = tags.get(prefix + PROCESS_START)
    return recorded is not None and abs(started - float(recorded)) > 0.01


def clock(moment: float | datetime | None) -> str:
    if moment is None:
        return "?"
    if isinstance(moment, (int, float)):
        moment = datetime.fromtimestamp(moment, tz=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    job: str
    partition: str | None
    pid: str | None
    host: str | None
    started: str

    def __str__(self) -> str:
        where = f"pid {self.pid}" + ("" if self.host == socket.gethostname() else f" on {self.host}") if self.pid else "process unknown"
        return f"run {self.run_id[:8]} ({self.job}{f' [{self.partition}]' if self.partition else ''}, {where}, since {self.started})"


def run_info(instance: DagsterInstance, run_id: str) -> RunInfo:
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return RunInfo(run_id, "unknown run", None, None, None, "?")
    run = record.dagster_run
    started = record.start_time or (record.create_timestamp.timestamp() if record.create_timestamp else None)
    prefix = SLOT_PROCESS if SLOT_PROCESS + PID in run.tags else RUN_PROCESS
    return RunInfo(run_id, run.job_name, run.tags.get("dagster/partition"), run.tags.get(prefix + PID),
                   run.tags.get(prefix + HOST), clock(started))


def free_dead_runs(instance: DagsterInstance, say: Callable[[str], None]) -> list[str]:
    """Free the pool slots of runs that cannot give them back, and say so (one line each):
    unfinished runs of this machine whose process is gone (marked failed), and finished runs
    that still hold a slot. Returns their run ids."""
    storage = instance.event_log_storage
    holders = set()
    if storage.supports_global_concurrency_limits:
        holders = {slot.run_id for pool in storage.get_concurrency_keys()
                   for slot in storage.get_concurrency_info(pool).claimed_slots}
    freed = []
    for run in instance.get_runs(RunsFilter(statuses=NOT_FINISHED_STATUSES)):
        if process_gone(run.tags) or (run.run_id in holders and process_gone(run.tags, SLOT_PROCESS)):
            info = run_info(instance, run.run_id)
            storage.free_concurrency_slots_for_run(run.run_id)
            instance.report_run_failed(run, message=f"its process (pid {info.pid}) is gone: killed or crashed")
            say(f"{info} has no process any more (killed or crashed): marked failed, its training slot freed")
            freed.append(run.run_id)
    for run_id in sorted(holders - set(freed)):
        record = instance.get_run_record_by_id(run_id)
        if record is not None and record.dagster_run.status not in NOT_FINISHED_STATUSES:
            storage.free_concurrency_slots_for_run(run_id)
            say(f"{run_info(instance, run_id)} ended ({record.dagster_run.status.value.lower()}) "
                "but still held a training slot: freed")
            freed.append(run_id)
    return freed


def claim(instance: DagsterInstance, pool: str, run_id: str, step_key: str) -> bool:
    """Claim (or queue for) a slot of `pool`; True once held. A pool without a limit (no
    `concurrency` settings in dagster.yaml, none set) never blocks: the same rules as Dagster's executor."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return True
    default = storage.get_pool_config().default_pool_limit
    limits = {limit.name: limit for limit in storage.get_pool_limits()}
    known = limits.get(pool)
    if (known is None and default is not None) or (known is not None and known.from_default and known.limit != default):
        storage.initialize_concurrency_limit_to_default(pool)
        known = {limit.name: limit for limit in storage.get_pool_limits()}.get(pool)
    if known is None:
        return True
    return storage.claim_concurrency_slot(pool, run_id, step_key).is_claimed


@contextmanager
def training_slot(instance: DagsterInstance, pool: str, run_id: str, step_key: str, what: str,
                  say: Callable[[str], None], poll_s: float = POLL_SECONDS) -> Iterator[None]:
    """Hold a slot of `pool` for `step_key` of run `run_id` while the block runs. Waiting, it says
    at once (and each minute) which runs hold the slots, frees those whose process is gone, and
    sleeps between checks, so Ctrl+C (or terminating the run) stops it; the slot, or the place
    in the queue, is given back whatever happens."""
    instance.add_run_tags(run_id, process_tags(prefix=SLOT_PROCESS))  # so that others can tell if this process dies
    storage = instance.event_log_storage
    waited_since, said_at, said_holders = time.monotonic(), None, None
    try:
        while not claim(instance, pool, run_id, step_key):
            if free_dead_runs(instance, say):
                continue  # a slot may be free now: claim again before saying anything
            info = storage.get_concurrency_info(pool)
            holders = sorted({slot.run_id for slot in info.claimed_slots} - {run_id})
            now = time.monotonic()
            if holders != said_holders or said_at is None or now - said_at >= REPEAT_WAIT_MESSAGE_S:
                held = "; ".join(str(run_info(instance, holder)) for holder in holders) or "nobody (queued behind other steps)"
                say(f"{what}: waiting for a '{pool}' slot (limit {info.slot_count}, waited {now - waited_since:.0f} s), "
                    f"held by {held}; Ctrl+C stops")
                said_at, said_holders = now, holders
            time.sleep(poll_s)
        if said_at is not None:
            say(f"{what}: got a '{pool}' slot after {time.monotonic() - waited_since:.0f} s")
        yield
    finally:
        storage.free_concurrency_slot_for_step(run_id, step_key)  # the slot, or the pending claim
