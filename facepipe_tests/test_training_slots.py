"""A killed run never blocks the next: its training slot is freed by whoever waits for one (and
by `facepipe build` when it starts), saying which run and since when; a step waiting for a slot
says at INFO what it waits for, sleeps instead of spinning, and stops on Ctrl+C."""


import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from dagster import AssetExecutionContext, DagsterInstance, DagsterRun, DagsterRunStatus, asset, materialize
from dagster._core.errors import DagsterExecutionInterruptedError

from facepipe.slots import claim, process_tags, training_slot

PROJECT_INSTANCE_YAML = Path(__file__).resolve().parent.parent / ".dagster_home" / "dagster.yaml"
POOL = "training"


@pytest.fixture
def instance(tmp_path, monkeypatch):
    """The project's instance settings (training limit 1) in a throwaway DAGSTER_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_INSTANCE_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as made:
        yield made


@pytest.fixture
def holder_process():
    """A live process standing for another build that holds the slot; killed at teardown."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def a_run_of(instance: DagsterInstance, pid: int, job: str = "target_job", partition: str = "talk") -> str:
    """A started run of the given process, as `facepipe build` records one (tags: host, pid, start)."""
    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name=job, run_id=run_id, status=DagsterRunStatus.STARTED,
                                tags={**process_tags(pid), "dagster/partition": partition}))
    return run_id


def hold_slot(instance: DagsterInstance, pid: int) -> str:
    run_id = a_run_of(instance, pid)
    assert claim(instance, POOL, run_id, "target__xseg_model")
    return run_id


@asset
def trains(context: AssetExecutionContext) -> None:
    """Claims the training slot the way facepipe's training assets do (train_in_store)."""
    step_key = context.op_execution_context.get_step_execution_context().step.key
    with training_slot(context.instance, POOL, context.run.run_id, step_key, "demo/trains [jane]", context.log.info, poll_s=0.5):
        context.log.info("training now")


def info_lines(instance: DagsterInstance, run_id: str | None = None) -> list[str]:
    runs = [run_id] if run_id else [r.run_id for r in instance.get_runs()]
    return [entry.user_message for run in runs for entry in instance.all_logs(run) if entry.level == 20
            and "slot" in entry.user_message or "training now" in entry.user_message]


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_waiting_step_frees_the_slot_of_a_killed_run_and_says_so(instance, holder_process):
    holder = hold_slot(instance, holder_process.pid)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=materialize([trains], instance=instance)))
    worker.start()
    wait_for(lambda: any("waiting for a 'training' slot" in line for line in info_lines(instance)))
    [waiting] = [line for line in info_lines(instance) if "waiting for" in line]
    assert waiting.startswith(f"demo/trains [jane]: waiting for a 'training' slot (limit 1, waited 0 s), held by run "
                              f"{holder[:8]} (target_job [talk], pid {holder_process.pid}, since ")
    assert waiting.endswith("; Ctrl+C stops")
    time.sleep(1.5)
    assert worker.is_alive()  # one training at a time while the holder lives
    holder_process.kill()  # kill -9 of the build that held it
    worker.join(600)  # seconds when the machine is idle; a loaded one takes longer to end a run
    assert outcome["result"].success
    lines = info_lines(instance, outcome["result"].run_id)
    freed = [line for line in lines if "has no process any more" in line]
    assert freed and freed[0].startswith(f"run {holder[:8]} (target_job [talk], pid {holder_process.pid}, since ")
    assert freed[0].endswith("has no process any more (killed or crashed): marked failed, its training slot freed")
    assert lines[-2:] == [next(line for line in lines if "got a 'training' slot after" in line), "training now"]
    assert not any("held by nobody" in line for line in lines)  # freed, then claimed at once
    assert instance.get_run_by_id(holder).status == DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info(POOL).claimed_slots == []  # given back after training


def test_a_waiting_step_sleeps_and_stops_on_ctrl_c(instance, holder_process):
    holder = hold_slot(instance, holder_process.pid)
    me = psutil.Process()

    def interrupt_after_a_while():
        wait_for(lambda: any("waiting for" in line for line in info_lines(instance)))
        before = me.cpu_times()
        time.sleep(3)
        after = me.cpu_times()
        measured["cpu_s"] = (after.user + after.system) - (before.user + before.system)
        measured["sent"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C

    measured = {}
    threading.Thread(target=interrupt_after_a_while, daemon=True).start()
    with pytest.raises((KeyboardInterrupt, DagsterExecutionInterruptedError)):
        materialize([trains], instance=instance)
    assert time.monotonic() - measured["sent"] < 5
    assert measured["cpu_s"] < 1.0, measured  # Dagster's own wait spun at ~100 % of a core
    info = instance.event_log_storage.get_concurrency_info(POOL)
    assert [step.run_id for step in info.pending_steps] == [holder]  # its own place in the queue given back
    assert [slot.run_id for slot in info.claimed_slots] == [holder]


def test_build_frees_the_slot_of_a_build_killed_before(instance, holder_process, tmp_path, monkeypatch, capsys):
    from facepipe import cli

    holder = hold_slot(instance, holder_process.pid)
    holder_process.kill()
    holder_process.wait()
    monkeypatch.setenv("FACEPIPE_STORE", str(tmp_path / "store"))
    data = tmp_path / "data"
    (data / "identities" / "jane").mkdir(parents=True)  # no media: the build itself fails at once
    assert cli.main(["--data-root", str(data), "build", "--partition", "jane"]) == 1
    out = capsys.readouterr().out
    assert f"run {holder[:8]} (target_job [talk], pid {holder_process.pid}, since " in out
    assert "has no process any more (killed or crashed): marked failed, its training slot freed" in out
    with DagsterInstance.get() as fresh:
        assert fresh.get_run_by_id(holder).status == DagsterRunStatus.FAILURE
        assert fresh.event_log_storage.get_concurrency_info(POOL).claimed_slots == []


def test_a_slot_held_by_a_step_whose_process_died_is_freed_and_a_live_one_kept(instance, holder_process):
    """Under Celery one run's steps live in several processes: the slot's holder is judged by the
    process its step recorded (facepipe/slot_*), not by the run's."""
    from facepipe.slots import SLOT_PROCESS, free_dead_runs

    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    runs = {}
    for name, pid in (("dead", dead.pid), ("live", holder_process.pid)):
        runs[name] = str(uuid.uuid4())
        instance.add_run(DagsterRun(job_name="pair_job", run_id=runs[name], status=DagsterRunStatus.STARTED,
                                    tags={**process_tags(pid, prefix=SLOT_PROCESS), "dagster/partition": "a|b"}))
    dead.kill()
    dead.wait()
    instance.event_log_storage.set_concurrency_slots(POOL, 2)
    assert claim(instance, POOL, runs["dead"], "pair__lora_adapter") and claim(instance, POOL, runs["live"], "pair__lora_adapter")
    said = []
    assert free_dead_runs(instance, said.append) == [runs["dead"]]
    assert said == [f"run {runs['dead'][:8]} (pair_job [a|b], pid {dead.pid}, since {said[0].split('since ')[1].split(')')[0]}) "
                    "has no process any more (killed or crashed): marked failed, its training slot freed"]
    assert [slot.run_id for slot in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots] == [runs["live"]]
    assert instance.get_run_by_id(runs["live"]).status == DagsterRunStatus.STARTED
