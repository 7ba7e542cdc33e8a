"""Nightly rebuilds of only what changed, and declared pairs rebuilt after their inputs.

For every partition the nightly compares what the store recorded for each asset's current
output (`_artifact.json`: code version, config, input content hashes) with what is true now:
- the media folder's content hash, the target's user masks and the identity embedder;
- each asset's code version in the code;
- the config a nightly run would use: the Config defaults, overridden by the run config file
  named in FACEPIPE_NIGHTLY_CONFIG (the same file is sent with the runs it requests), overridden
  in turn by the partition's own settings (facepipe.partition_settings), as the assets apply them;
- the content hash of each upstream asset's current output;
- a missing or damaged output (a file missing or of another size than recorded).
A partition is requested when any of its assets differs. A false positive only costs a run of
cache hits (the store keys outputs on exactly these values); a miss would be a stale model, so
every doubt counts as a change. Nothing is decoded or trained here: a no-op night reads a few
small JSON files per asset and hashes the media files (hashes are memoised by name/size/mtime).

Dagster schedules launch one job each, so there are three schedules on the same cron
(`nightly_identity`, `nightly_target`, `nightly_pairs`). Pairs are declared in data/pairs.toml.
A pair whose identity or target is being rebuilt tonight is not requested by the schedule
(it would train its LoRA adapter on the old model, then again tomorrow): the run-status sensor
`pairs_after_role_runs` requests it when that role run has succeeded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from dagster import (
    AssetsDefinition,
    DagsterInstance,
    DagsterRunStatus,
    MultiToSingleDimensionPartitionMapping,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    ScheduleEvaluationContext,
    SkipReason,
    run_status_sensor,
    schedule,
)
from dagster._config import ConfigTypeKind, process_config
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from facepipe.assets import ASSETS
from facepipe.assets.stage import OUTSIDE_INPUTS, store_name
from facepipe.assets.training import POOL_TAG, TRAINING_POOL
from facepipe.automation import schedule_default, sensor_default
from facepipe.automation.discovery import JOB_OF_GROUP, PAIR_JOB, pair_job, role_job_name, role_jobs
from facepipe.labels import UserMaskError
from facepipe.media import MediaError
from facepipe import presets
from facepipe.pairs import PairsFileError, declared_pairs, pair_key
from facepipe.partition_settings import PartitionSettingsError, asset_settings
from facepipe.presets import for_job
from facepipe.partitions import PARTITIONS, ROLES, discover
from facepipe.resources import FacepipeSettings
from facepipe.store import ArtifactStore, MissingInput, canonical_json

NIGHTLY_CRON_ENV = "FACEPIPE_NIGHTLY_CRON"
DEFAULT_NIGHTLY_CRON = "0 3 * * *"
NIGHTLY_TIMEZONE_ENV = "FACEPIPE_NIGHTLY_TIMEZONE"  # e.g. Europe/Berlin; Dagster's default is UTC
NIGHTLY_CONFIG_ENV = "FACEPIPE_NIGHTLY_CONFIG"  # a YAML/JSON run config ({"ops": {...}}) for nightly runs
PARTITION_TAG = "dagster/partition"
REASON_TAG = "facepipe/nightly_reason"


# ---------------------------------------------------------------------------------------------
# What each asset records, read off the asset definitions (the graph is declared once, there).

@dataclass(frozen=True)
class Stage:
    asset: str  # the store's name, "<group>/<asset>"
    code_version: str
    config_type: Any | None  # the op's Dagster config type; None = records {}
    with_device: bool  # training assets record the device kind (settings.device_kind) beside their config
    # input name in the record -> (upstream store asset, which partition: "identity"/"target"/"pair")
    upstream: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def op_name(self) -> str:
        return self.asset.replace("/", "__")

    @property
    def group(self) -> str:
        return self.asset.split("/")[0]


def stage_of(assets_def: AssetsDefinition) -> Stage:
    key = assets_def.key
    group = key.path[0]
    upstream = {}
    for name, upstream_key in sorted(assets_def.keys_by_input_name.items()):
        mapping = assets_def.get_partition_mapping(upstream_key)
        side = mapping.partition_dimension_name if isinstance(mapping, MultiToSingleDimensionPartitionMapping) else group
        upstream[name] = (store_name(upstream_key), side)
    schema = assets_def.op.config_schema
    config_type = schema.config_type if schema is not None and schema.config_type.kind == ConfigTypeKind.STRICT_SHAPE else None
    return Stage(store_name(key), assets_def.code_versions_by_key[key], config_type, assets_def.op.tags.get(POOL_TAG) == TRAINING_POOL,
                 upstream)


def stages_by_group(assets: list[AssetsDefinition]) -> dict[str, list[Stage]]:
    """Every asset's Stage, per group ("identity", "target", "pair"), upstream before downstream."""
    stages = {stage.asset: stage for stage in map(stage_of, assets)}
    order = TopologicalSorter({name: [up for up, _ in stage.upstream.values()] for name, stage in stages.items()})
    grouped: dict[str, list[Stage]] = {}
    for name in order.static_order():
        grouped.setdefault(stages[name].group, []).append(stages[name])
    return grouped


STAGES: dict[str, list[Stage]] = stages_by_group(ASSETS)


# ---------------------------------------------------------------------------------------------
# The world as it is now.

class NightlyConfigError(ValueError):
    pass


def load_nightly_run_config(path: str | Path | None = None) -> dict[str, Any]:
    """The run config nightly runs use (and are judged against): `path`, else FACEPIPE_NIGHTLY_CONFIG,
    else none (every asset's Config defaults). Either names a run config file (YAML/JSON) or a
    preset shipped with facepipe (`quality`, `gpu`: facepipe/presets/). An op of no job or an unknown
    op fails here, an unknown field or a value of the wrong type when a decision reads that op's
    config (World.expected_config): either way the tick fails with one line instead of launching
    runs that fail."""
    source = path or os.environ.get(NIGHTLY_CONFIG_ENV)
    if not source:
        return {}
    try:
        run_config = presets.load(source)
    except presets.RunConfigError as error:
        raise NightlyConfigError(f"nightly run config ({NIGHTLY_CONFIG_ENV}): {error}") from error
    for op in run_config.ops:  # field names and values are checked per asset, in World.expected_config
        group = op.split("__")[0]
        known = [stage.op_name for stage in STAGES.get(group, [])]
        if op not in known:
            where = f"no such op in {JOB_OF_GROUP[group]} (its ops: {', '.join(known)})" if known else "belongs to no job"
            raise NightlyConfigError(f"nightly run config ({NIGHTLY_CONFIG_ENV}) {run_config.source}: {op}: {where}")
    return run_config.config


@dataclass
class World:
    """Everything a decision compares the store with, computed lazily and at most once."""

    settings: FacepipeSettings
    run_config: dict[str, Any]
    _outside: dict[tuple, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: FacepipeSettings, run_config: dict[str, Any]) -> World:
        return cls(settings, run_config)

    @cached_property
    def store(self) -> ArtifactStore:
        return self.settings.store

    @cached_property
    def device(self) -> str:
        return self.settings.device_kind

    def op_config(self, op_name: str) -> dict[str, Any]:
        return ((self.run_config.get("ops") or {}).get(op_name) or {}).get("config") or {}

    def expected_config(self, stage: Stage, partition: str) -> dict[str, Any]:
        """The config a run would build `partition` with: the nightly run config, overridden by the
        partition's own settings (facepipe.partition_settings), as the asset applies them."""
        if stage.config_type is None:
            return {}
        processed = process_config(stage.config_type, self.op_config(stage.op_name))
        if not processed.success:
            raise NightlyConfigError(f"nightly run config for {stage.op_name}: "
                                     + "; ".join(error.message for error in processed.errors))
        where, values = asset_settings(self.settings.data_path, stage.asset, partition)
        if values:
            processed = process_config(stage.config_type, {**self.op_config(stage.op_name), **values})
            if not processed.success:
                raise PartitionSettingsError(f"{where}: " + "; ".join(error.message for error in processed.errors))
        return {**processed.value, "device": self.device} if stage.with_device else processed.value

    def outside_inputs(self, stage: Stage, partitions: dict[str, str], config: dict[str, Any]) -> dict[str, str]:
        """What the asset reads from outside the store (media, user masks, the embedder), as the asset sees it."""
        read = OUTSIDE_INPUTS.get(stage.asset)
        if read is None:
            return {}
        cache_key = (stage.asset, partitions[stage.group], canonical_json(config))
        if cache_key not in self._outside:
            self._outside[cache_key] = read(self.settings, partitions[stage.group], config)
        return self._outside[cache_key]


# ---------------------------------------------------------------------------------------------
# Decisions (plain functions; the schedules and the sensor below only call them).

def stage_change(world: World, stage: Stage, partitions: dict[str, str], rebuilt: set[tuple[str, str]]) -> str | None:
    """Why `stage` would not be a cache hit for these partitions, or None if it would.

    `rebuilt` holds (asset, partition) pairs already found changed, so their dependents count
    as changed too (their new output will have a new content hash).
    """
    group = stage.asset.split("/")[0]
    partition = partitions[group]
    try:
        record = world.store.current_record(stage.asset, partition)
    except MissingInput:
        return "no output yet"
    if problem := world.store.current_damage(stage.asset, partition):  # presence and sizes; `facepipe verify` hashes
        return f"output damaged ({problem})"
    now = stage.code_version
    if record.get("code_version") != now:
        return f"code version {record.get('code_version')} -> {now}"
    try:
        config = world.expected_config(stage, partition)
    except (PartitionSettingsError, PairsFileError) as error:
        return f"cannot read its settings ({error}); the run will report it"
    recorded_config = record.get("config", {})
    if recorded_config != config:
        changed = sorted(k for k in set(config) | set(recorded_config) if config.get(k) != recorded_config.get(k))
        return f"config changed ({', '.join(changed)})"
    inputs = record.get("inputs", {})
    for name, (upstream, side) in stage.upstream.items():
        if (upstream, partitions[side]) in rebuilt:
            return f"{upstream} [{partitions[side]}] is rebuilt first"
        try:
            current = world.store.current_record(upstream, partitions[side])["content_hash"]
        except MissingInput:
            return f"{upstream} [{partitions[side]}] has no output"
        if inputs.get(name) != current:
            return f"input {name} changed"
    try:
        outside = world.outside_inputs(stage, partitions, config)
    except (MediaError, UserMaskError, OSError, ValueError) as error:
        return f"cannot read its inputs ({error}); the run will report it"
    for name, value in outside.items():
        if inputs.get(name) != value:
            return f"{name} changed"
    return None


def stage_changes(world: World, stages: list[Stage], partitions: dict[str, str],
                  rebuilt: set[tuple[str, str]] | None = None) -> dict[str, str]:
    """{asset: reason} for every stage (in graph order) that a run would not find in the store."""
    rebuilt = set(rebuilt or ())
    changes = {}
    for stage in stages:
        reason = stage_change(world, stage, partitions, rebuilt)
        if reason is not None:
            changes[stage.asset] = reason
            rebuilt.add((stage.asset, partitions[stage.asset.split("/")[0]]))
    return changes


def role_changes(world: World, role: str, key: str) -> dict[str, str]:
    return stage_changes(world, STAGES[role], {role: key})


def pair_changes(world: World, identity: str, target: str) -> dict[str, str]:
    """The pair's own assets, judged against the identity's and target's current outputs."""
    return stage_changes(world, STAGES["pair"], {"identity": identity, "target": target, "pair": pair_key(identity, target)})


def describe(changes: dict[str, str]) -> str:
    return "; ".join(f"{asset}: {reason}" for asset, reason in changes.items())


def present_partitions(instance: DagsterInstance, data_root: Path, role: str) -> list[str]:
    """Registered partitions whose folder still exists (the media sensor registers new ones)."""
    registered = set(instance.get_dynamic_partitions(PARTITIONS[role].name))
    return [key for key in discover(data_root, role).keys if key in registered]


def unfinished_partitions(instance: DagsterInstance, job_name: str) -> set[str]:
    """Partitions with a run of `job_name` queued or in progress: requesting them again only queues a duplicate."""
    records = instance.get_run_records(RunsFilter(job_name=job_name, statuses=NOT_FINISHED_STATUSES))
    return {r.dagster_run.tags[PARTITION_TAG] for r in records if PARTITION_TAG in r.dagster_run.tags}


def request(job_name: str, group: str, partition: str, changes: dict[str, str], run_config: dict[str, Any],
            run_key: str | None = None) -> RunRequest:
    return RunRequest(run_key=run_key or f"{job_name}:{partition}", job_name=job_name, partition_key=partition,
                      run_config=for_job(run_config, group), tags={REASON_TAG: describe(changes)[:500]})


@dataclass(frozen=True)
class PairPlan:
    requested: dict[str, dict[str, str]]  # pair key -> {asset: reason}
    waiting: dict[str, list[str]]  # pair key -> role partitions rebuilt first ("identity hopper")
    missing_folders: list[str]  # declared pairs whose identity or target is not a registered folder


def plan_pairs(world: World, pairs: list[tuple[str, str]], present: dict[str, list[str]]) -> PairPlan:
    """Declared pairs to request tonight, and those that wait for a role partition being rebuilt."""
    requested, waiting, missing = {}, {}, []
    role_cache: dict[tuple[str, str], bool] = {}
    for identity, target in pairs:
        key = pair_key(identity, target)
        if identity not in present["identity"] or target not in present["target"]:
            missing.append(key)
            continue
        stale_roles = []
        for role, role_key in (("identity", identity), ("target", target)):
            if (role, role_key) not in role_cache:
                role_cache[(role, role_key)] = bool(role_changes(world, role, role_key))
            if role_cache[(role, role_key)]:
                stale_roles.append(f"{role} {role_key}")
        if stale_roles:
            waiting[key] = stale_roles
        elif changes := pair_changes(world, identity, target):
            requested[key] = changes
    return PairPlan(requested, waiting, missing)


def state_digest(world: World, identity: str, target: str) -> str:
    """Names the inputs a pair run would see now, so one state is requested once (sensor run keys)."""
    state = {}
    for stage in STAGES["pair"]:
        for upstream, side in stage.upstream.values():
            partition = {"identity": identity, "target": target}.get(side)
            if partition is not None:
                try:
                    state[f"{upstream}[{partition}]"] = world.store.current_record(upstream, partition)["content_hash"]
                except MissingInput:
                    state[f"{upstream}[{partition}]"] = None
        try:
            state[stage.asset] = [stage.code_version, world.expected_config(stage, pair_key(identity, target))]
        except (PartitionSettingsError, PairsFileError) as error:
            state[stage.asset] = [stage.code_version, str(error)]
    return hashlib.sha256(canonical_json(state)).hexdigest()[:16]


def role_requests(context, settings: FacepipeSettings, world: World, role: str,
                  run_key: str | None = None) -> tuple[list[RunRequest], list[str]]:
    """Run requests for the `role` partitions that changed, and the changed ones that already have a run."""
    job_name = role_job_name(role)
    busy = unfinished_partitions(context.instance, job_name)
    requests, running = [], []
    for key in present_partitions(context.instance, settings.data_path, role):
        changes = role_changes(world, role, key)
        if not changes:
            continue
        if key in busy:
            context.log.info(f"{role} {key} changed but a run for it is already queued or running: not requested again")
            running.append(key)
            continue
        context.log.info(f"{role} {key}: {describe(changes)}")
        requests.append(request(job_name, role, key, changes, world.run_config,
                                run_key and f"{job_name}:{key}:{run_key}"))
    return requests, running


def pair_requests(context, settings: FacepipeSettings, world: World,
                  run_key: str | None = None) -> tuple[list[RunRequest], list[str], PairPlan]:
    """Run requests for the declared pairs that changed (not those waiting for a role run), the
    changed ones that already have a run, and the plan; PairsFileError when pairs.toml is unreadable."""
    pairs = declared_pairs(settings.data_path)
    present = {role: present_partitions(context.instance, settings.data_path, role) for role in ROLES}
    plan = plan_pairs(world, pairs, present)
    for key in plan.missing_folders:
        context.log.warning(f"pair {key} in pairs.toml: its identity or target folder is missing or not registered yet")
    for key, roles in plan.waiting.items():
        context.log.info(f"pair {key} waits for {', '.join(roles)} (rebuilt tonight); pairs_after_role_runs requests it after")
    busy = unfinished_partitions(context.instance, PAIR_JOB)
    requests, running = [], []
    for key, changes in plan.requested.items():
        if key in busy:
            context.log.info(f"pair {key} changed but a run for it is already queued or running")
            running.append(key)
            continue
        context.log.info(f"pair {key}: {describe(changes)}")
        requests.append(request(PAIR_JOB, "pair", key, changes, world.run_config, run_key and f"{PAIR_JOB}:{key}:{run_key}"))
    return requests, running, plan


# ---------------------------------------------------------------------------------------------
# Dagster: three schedules on one cron, and the sensor that follows role runs with their pairs.

def nightly_cron() -> str:
    return os.environ.get(NIGHTLY_CRON_ENV) or DEFAULT_NIGHTLY_CRON


def nightly_timezone() -> str | None:
    return os.environ.get(NIGHTLY_TIMEZONE_ENV) or None


def role_schedule(role: str, job, cron: str, timezone: str | None):
    @schedule(name=f"nightly_{role}", cron_schedule=cron, job=job, execution_timezone=timezone,
              default_status=schedule_default(),
              description=f"Rebuilds the {role} partitions whose media, user inputs, config or code version changed "
                          f"(cron from {NIGHTLY_CRON_ENV}, default '{DEFAULT_NIGHTLY_CRON}').")
    def nightly(context: ScheduleEvaluationContext, settings: FacepipeSettings):
        world = World.from_settings(settings, load_nightly_run_config())
        requests, running = role_requests(context, settings, world, role)
        return requests or SkipReason(nothing_to_request(f"{role} partition", running))

    return nightly


def pairs_schedule(cron: str, timezone: str | None):
    @schedule(name="nightly_pairs", cron_schedule=cron, job=pair_job, execution_timezone=timezone,
              default_status=schedule_default(),
              description="Rebuilds the pairs declared in data/pairs.toml whose inputs, config or code version changed; "
                          "a pair whose identity or target is rebuilt tonight follows that run (pairs_after_role_runs).")
    def nightly_pairs(context: ScheduleEvaluationContext, settings: FacepipeSettings):
        world = World.from_settings(settings, load_nightly_run_config())
        try:
            requests, running, plan = pair_requests(context, settings, world)
        except PairsFileError as error:
            return SkipReason(f"cannot read the declared pairs: {error}")
        waiting = f" ({', '.join(plan.waiting)} wait for their identity/target runs)" if plan.waiting else ""
        return requests or SkipReason(nothing_to_request("declared pair", running) + waiting)

    return nightly_pairs


def nothing_to_request(what: str, running: list[str]) -> str:
    """Why a tick requests nothing: no change, or every change already has its run."""
    if running:
        return f"nothing new to request: {', '.join(running)} changed and already has a run queued or running"
    return f"no {what} changed"


ROLE_OF_JOB = {role_job_name(role): role for role in ROLES}


@run_status_sensor(name="pairs_after_role_runs", run_status=DagsterRunStatus.SUCCESS, monitored_jobs=role_jobs,
                   request_job=pair_job, default_status=sensor_default(), minimum_interval_seconds=30,
                   description="When an identity or target run succeeds, requests the declared pairs it feeds whose "
                               "inputs changed (once the pair's other side has no run pending).")
def pairs_after_role_runs(context: RunStatusSensorContext, settings: FacepipeSettings):
    run = context.dagster_run
    role, key = ROLE_OF_JOB.get(run.job_name), run.tags.get(PARTITION_TAG)
    if role is None or key is None:
        return SkipReason(f"run {run.run_id} is not a partitioned identity/target run")
    world = World.from_settings(settings, load_nightly_run_config())
    try:
        pairs = [p for p in declared_pairs(settings.data_path) if p[ROLES.index(role)] == key]
    except PairsFileError as error:
        return SkipReason(f"cannot read the declared pairs: {error}")
    requests = []
    for identity, target in pairs:
        other_role, other_key = ("target", target) if role == "identity" else ("identity", identity)
        if other_key not in context.instance.get_dynamic_partitions(PARTITIONS[other_role].name):
            continue
        if other_key in unfinished_partitions(context.instance, role_job_name(other_role)):
            context.log.info(f"pair {pair_key(identity, target)} waits for the {other_role} {other_key} run in progress")
            continue
        if changes := pair_changes(world, identity, target):
            pair = pair_key(identity, target)
            requests.append(request(PAIR_JOB, "pair", pair, changes, world.run_config,
                                    run_key=f"{PAIR_JOB}:{pair}:{state_digest(world, identity, target)}"))
    return requests or SkipReason(f"no declared pair of {role} {key} changed")


def preview(instance: DagsterInstance, settings: FacepipeSettings, run_config: dict[str, Any] | None = None) -> dict:
    """What the nightly schedules would decide now, without launching anything."""
    world = World.from_settings(settings, load_nightly_run_config() if run_config is None else run_config)
    present = {role: present_partitions(instance, settings.data_path, role) for role in ROLES}
    decided: dict[str, Any] = {role: {key: changes for key in present[role] if (changes := role_changes(world, role, key))}
                               for role in ROLES}
    decided["pairs"] = plan_pairs(world, declared_pairs(settings.data_path), present)
    return decided


def main() -> None:
    """`python -m facepipe.automation.nightly`: print tonight's decisions and how long they took."""
    import time

    from facepipe.resources import use_project_instance

    use_project_instance()
    started = time.perf_counter()
    with DagsterInstance.get() as instance:
        decided = preview(instance, FacepipeSettings())
    elapsed = time.perf_counter() - started
    for role in ROLES:
        for key, changes in decided[role].items():
            print(f"{role} {key}: {describe(changes)}")
    plan = decided["pairs"]
    for key, changes in plan.requested.items():
        print(f"pair {key}: {describe(changes)}")
    for key, roles in plan.waiting.items():
        print(f"pair {key}: waits for {', '.join(roles)}")
    for key in plan.missing_folders:
        print(f"pair {key}: identity or target folder missing or not registered")
    count = sum(len(decided[role]) for role in ROLES) + len(plan.requested)
    print(f"{count} run(s) would be requested ({len(plan.waiting)} pair(s) would follow role runs); decided in {elapsed:.2f} s")


def build_nightly_schedules(cron: str | None = None, timezone: str | None = None) -> list:
    cron = cron or nightly_cron()
    timezone = timezone or nightly_timezone()
    jobs = dict(zip(ROLES, role_jobs))
    return [*(role_schedule(role, jobs[role], cron, timezone) for role in ROLES), pairs_schedule(cron, timezone)]


nightly_schedules = build_nightly_schedules()


if __name__ == "__main__":
    main()
