"""Nightly automation on a real (tiny) build: nothing changed -> nothing requested; one changed
media file -> that partition only; a code-version bump -> everything downstream, pairs after
their identity run has succeeded."""

import json
import logging
import shutil
import time
from functools import cached_property
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    build_run_status_sensor_context,
    build_schedule_context,
    in_process_executor,
    validate_run_config,
)

from facepipe.assets.stage import STORE_INPUT, store_input, store_name
from facepipe.automation import nightly
from facepipe.automation.discovery import pair_job, role_jobs
from facepipe.automation.nightly import (
    NIGHTLY_CONFIG_ENV,
    PairPlan,
    World,
    load_nightly_run_config,
    nightly_schedules,
    pairs_after_role_runs,
    plan_pairs,
    preview,
    role_changes,
    stages_by_group,
)
from facepipe.automation.verify import nightly_verify, rebuild_after_verify, verify_job
from facepipe.definitions import defs
from facepipe.media import decode_video
from facepipe.pairs import declare_pair, declared_pairs
from facepipe.presets import for_job
from facepipe.resources import FacepipeSettings
from facepipe.media import write_video
from facepipe.sample import astronaut_face, hopper_face, render_head_video
from facepipe_tests.conftest import Project, tiny_run_config

SCHEDULES = {s.name: s for s in nightly_schedules}



@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real build: identity 'hopper', target 'talk', pair hopper|talk (tiny clips, tiny trainings)."""
    project = Project(tmp_path_factory.mktemp("nightly_build"))
    render_head_video(hopper_face(160), project.folder("identity", "hopper") / "hopper.mp4", n_frames=10, size=160)
    render_head_video(astronaut_face(160), project.folder("target", "talk") / "talk.mp4", n_frames=10, size=160, occluders=True)
    project.materialize("identity", "hopper", tiny_run_config("identity__identity_model"), assets=project.identity_assets)
    project.materialize("target", "talk", tiny_run_config("target__xseg_model"), assets=project.target_assets)
    project.materialize("pair", "hopper|talk", tiny_run_config("pair__lora_adapter"), assets=project.pair_assets)
    declare_pair(project.data, "hopper", "talk")
    (project.root / "nightly.json").write_text(json.dumps(tiny_run_config()))
    return project.root


class Copy:
    """A copy of the build with a second identity and target (file copies of the first ones, so
    unchanged by construction), two declared pairs, and a fresh instance that knows them all."""

    def __init__(self, built: Path, root: Path):
        for name in ("data", "store", "nightly.json"):
            (shutil.copytree if (built / name).is_dir() else shutil.copy)(built / name, root / name)
        self.root, self.data, self.store = root, root / "data", root / "store"
        for role, key, twin in (("identity", "hopper", "hopper2"), ("target", "talk", "talk2")):
            folder = "identities" if role == "identity" else "targets"
            shutil.copytree(self.data / folder / key, self.data / folder / twin)
            for asset_dir in (self.store / role).iterdir():
                shutil.copytree(asset_dir / key, asset_dir / twin)
        for asset_dir in (self.store / "pair").iterdir():
            shutil.copytree(asset_dir / "hopper" / "talk", asset_dir / "hopper2" / "talk2")
        declare_pair(self.data, "hopper2", "talk2")
        # on disk: schedule contexts re-open the instance from its reference
        (root / "dagster_home").mkdir()
        self.instance = DagsterInstance.local_temp(str(root / "dagster_home"))
        self.instance.add_dynamic_partitions("identity", ["hopper", "hopper2"])
        self.instance.add_dynamic_partitions("target", ["talk", "talk2"])
        self.settings = FacepipeSettings(data_root=str(self.data), store_root=str(self.store),
                                         models_root=str(root / "models"))
        self.assets = list(defs.assets)

    def world(self) -> World:
        return World.from_settings(self.settings, load_nightly_run_config())

    def definitions(self) -> Definitions:
        """The project's graph, jobs and schedules, bound to this copy's folders."""
        return Definitions(assets=self.assets, asset_checks=defs.asset_checks, jobs=[*role_jobs, pair_job],
                           schedules=nightly_schedules, resources={"settings": self.settings, STORE_INPUT: store_input},
                           executor=in_process_executor)

    def bump_code_version(self, monkeypatch, asset: str) -> str:
        """A code change to `asset`: its definition gets a new code version, seen by the nightly and
        by runs; returns "code version <before> -> <after>", the reason the nightly gives."""
        bumped = [definition.map_asset_specs(lambda spec: spec.replace_attributes(code_version=f"{spec.code_version}+1"))
                  if store_name(definition.key) == asset else definition for definition in self.assets]
        monkeypatch.setattr(nightly, "STAGES", stages_by_group(bumped))
        self.assets = bumped
        after = next(d.code_versions_by_key[d.key] for d in bumped if store_name(d.key) == asset)
        return f"code version {after.removesuffix('+1')} -> {after}"

    @cached_property
    def repository(self):
        return self.definitions().get_repository_def()

    def requests(self, name: str) -> list:
        """A tick of one schedule, evaluated as the daemon does (partition keys resolved against the job)."""
        # `with`: the context opens its own handle on the instance and must close it in order
        with build_schedule_context(instance=self.instance, resources={"settings": self.settings},
                                    repository_def=self.repository) as context:
            return list(SCHEDULES[name].evaluate_tick(context).run_requests or [])

    def tick(self, name: str) -> list[tuple[str, str]]:
        return sorted((r.job_name, r.partition_key) for r in self.requests(name))

    def all_ticks(self) -> dict[str, list[tuple[str, str]]]:
        return {name: self.tick(name) for name in SCHEDULES}


@pytest.fixture
def copy(built, tmp_path, monkeypatch):
    made = Copy(built, tmp_path)
    monkeypatch.setenv(NIGHTLY_CONFIG_ENV, str(made.root / "nightly.json"))
    return made


def test_nothing_changed_requests_nothing_and_takes_seconds(copy):
    started = time.perf_counter()
    ticks = copy.all_ticks()
    elapsed = time.perf_counter() - started
    print(f"no-op nightly over 2 identities, 2 targets, 2 pairs: {elapsed:.2f} s")
    assert ticks == {"nightly_identity": [], "nightly_target": [], "nightly_pairs": []}
    assert preview(copy.instance, copy.settings) == {"identity": {}, "target": {}, "pairs": PairPlan({}, {}, [])}


def test_one_changed_media_file_requests_only_that_partition(copy):
    clip = copy.data / "targets" / "talk2" / "talk.mp4"
    write_video(clip, list(decode_video(clip))[::-1], 25)  # same file name, other content
    assert copy.all_ticks() == {"nightly_identity": [], "nightly_target": [("target_job", "talk2")], "nightly_pairs": []}
    # the pair of that target waits for the target run instead of training on the old masks
    plan = plan_pairs(copy.world(), declared_pairs(copy.data), {"identity": ["hopper", "hopper2"], "target": ["talk", "talk2"]})
    assert plan == PairPlan(requested={}, waiting={"hopper2|talk2": ["target talk2"]}, missing_folders=[])
    assert next(iter(role_changes(copy.world(), "target", "talk2"))) == "target/media"

    # A run for it is already going (say the media sensor saw the change first): no duplicate.
    copy.instance.add_run(DagsterRun(job_name="target_job", status=DagsterRunStatus.STARTED,
                                     tags={"dagster/partition": "talk2"}))
    with build_schedule_context(instance=copy.instance, resources={"settings": copy.settings},
                                repository_def=copy.repository) as context:
        result = SCHEDULES["nightly_target"].evaluate_tick(context)
    assert not result.run_requests
    assert result.skip_message == "nothing new to request: talk2 changed and already has a run queued or running"


def test_user_masks_and_config_changes_are_changes(copy):
    masks = copy.data / "targets" / "talk" / "masks"
    masks.mkdir()
    (masks / "talk_000001.png").write_bytes(b"not even read by the nightly, only hashed")
    assert copy.tick("nightly_target") == [("target_job", "talk")]
    assert role_changes(copy.world(), "target", "talk") == {
        "target/xseg_model": "user_masks changed", "target/target_masks": "target/xseg_model [talk] is rebuilt first"}

    shutil.rmtree(masks)
    config = json.loads((copy.root / "nightly.json").read_text())
    config["ops"]["identity__identity_model"]["config"]["epochs"] += 1
    (copy.root / "nightly.json").write_text(json.dumps(config))
    assert copy.all_ticks() == {"nightly_identity": [("identity_job", "hopper"), ("identity_job", "hopper2")],
                                "nightly_target": [], "nightly_pairs": []}
    assert role_changes(copy.world(), "identity", "hopper") == {"identity/identity_model": "config changed (epochs)"}


def test_a_changed_curation_file_rebuilds_curation_and_what_trains_on_it(copy):
    (copy.data / "targets" / "talk" / "curation.toml").write_text('drop = ["talk_000001"]\n')
    assert copy.all_ticks() == {"nightly_identity": [], "nightly_target": [("target_job", "talk")], "nightly_pairs": []}
    changes = role_changes(copy.world(), "target", "talk")
    assert changes["target/curated_faces"] == "curation_file changed"
    assert set(changes) == {"target/curated_faces", "target/xseg_model", "target/target_masks"}  # not the media or faces


def test_a_partitions_own_settings_are_what_its_runs_build_and_the_nightly_expects(copy):
    (copy.data / "identities" / "hopper" / "settings.toml").write_text("[identity_model]\nseed = 1\n")
    (copy.data / "pairs.toml").write_text((copy.data / "pairs.toml").read_text().replace(
        'target = "talk2"', 'target = "talk2"\nonnx_export = { sharpen = 0.25 }'))
    # that identity only, and that pair only (its identity and target are unchanged)
    assert copy.all_ticks() == {"nightly_identity": [("identity_job", "hopper")], "nightly_target": [],
                                "nightly_pairs": [("pair_job", "hopper2|talk2")]}
    changes = role_changes(copy.world(), "identity", "hopper")
    assert changes == {"identity/identity_model": "config changed (seed)"}
    # the run builds with them (the nightly's own run config, no seed in it), and then nothing has changed
    project = Project(copy.root)
    project.instance = copy.instance
    project.materialize("identity", "hopper", for_job(load_nightly_run_config(), "identity"), assets=project.identity_assets)
    record = copy.world().store.current_record("identity/identity_model", "hopper")
    assert record["config"]["seed"] == 1
    assert role_changes(copy.world(), "identity", "hopper") == {}
    # a settings file that cannot be used does not stop the night: its partition's run reports it
    (copy.data / "identities" / "hopper" / "settings.toml").write_text("[identity_model]\nturn = 'half'\n")
    reason = role_changes(copy.world(), "identity", "hopper")["identity/identity_model"]
    assert reason.startswith("cannot read its settings (") and "settings.toml" in reason and "turn" in reason


def test_requests_carry_the_nightly_config_and_validate_against_the_jobs(copy):
    (copy.data / "identities" / "hopper" / "extra.mp4").write_bytes((copy.data / "identities" / "hopper" / "hopper.mp4").read_bytes())
    [request] = copy.requests("nightly_identity")
    assert request.partition_key == "hopper" and request.job_name == "identity_job"
    assert "identity/media: media changed" in request.tags["facepipe/nightly_reason"]
    assert request.run_config == tiny_run_config("identity__identity_model")  # only this job's ops
    assert validate_run_config(defs.resolve_job_def("identity_job"), request.run_config)


def test_code_version_bump_rebuilds_everything_downstream(copy, monkeypatch):
    bumped = copy.bump_code_version(monkeypatch, "identity/identity_model")
    assert copy.all_ticks() == {"nightly_identity": [("identity_job", "hopper"), ("identity_job", "hopper2")],
                                "nightly_target": [], "nightly_pairs": []}
    assert role_changes(copy.world(), "identity", "hopper") == {"identity/identity_model": bumped}
    plan = plan_pairs(copy.world(), declared_pairs(copy.data), {"identity": ["hopper", "hopper2"], "target": ["talk", "talk2"]})
    assert plan.waiting == {"hopper|talk": ["identity hopper"], "hopper2|talk2": ["identity hopper2"]}

    # the identity run the schedule asked for, for real; its success brings the pair along
    result = copy.definitions().resolve_job_def("identity_job").execute_in_process(
        instance=copy.instance, partition_key="hopper", run_config=tiny_run_config("identity__identity_model"))
    assert result.success
    [success] = [e.dagster_event for e in copy.instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_SUCCESS)]
    context = build_run_status_sensor_context(sensor_name="pairs_after_role_runs", dagster_event=success,
                                              dagster_instance=copy.instance,
                                              dagster_run=copy.instance.get_run_by_id(result.run_id),
                                              resources={"settings": copy.settings})
    [request] = pairs_after_role_runs(context)
    assert (request.job_name, request.partition_key) == ("pair_job", "hopper|talk")  # not hopper2|talk2
    assert "pair/lora_adapter: input identity_model changed" in request.tags["facepipe/nightly_reason"]
    assert request.run_config == tiny_run_config("pair__lora_adapter")
    assert copy.tick("nightly_identity") == [("identity_job", "hopper2")]  # hopper is current again


def test_pair_code_bump_and_new_declared_pair(copy, monkeypatch):
    unchanged = nightly.STAGES
    bumped = copy.bump_code_version(monkeypatch, "pair/onnx_export")
    assert copy.all_ticks() == {"nightly_identity": [], "nightly_target": [],
                                "nightly_pairs": [("pair_job", "hopper2|talk2"), ("pair_job", "hopper|talk")]}
    # resolved as the daemon resolves them: multi-partition keys against the pair job
    resolved = copy.requests("nightly_pairs")
    assert sorted((r.tags["dagster/partition/identity"], r.tags["dagster/partition/target"]) for r in resolved) == [
        ("hopper", "talk"), ("hopper2", "talk2")]
    assert all(r.tags["facepipe/nightly_reason"] == f"pair/onnx_export: {bumped}" for r in resolved)

    monkeypatch.setattr(nightly, "STAGES", unchanged)
    declare_pair(copy.data, "hopper", "talk2")  # declared, never built
    declare_pair(copy.data, "hopper", "nobody")  # no such target folder: reported, not requested
    assert copy.tick("nightly_pairs") == [("pair_job", "hopper|talk2")]


def test_the_nightly_content_check_retires_a_silently_changed_output_and_rebuilds_it(copy):
    faces = copy.store / "identity" / "faces" / "hopper"
    masks = next(faces.glob("*/masks.npy"))
    data = bytearray(masks.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: the schedules' cheap check (presence, sizes) cannot see it
    masks.write_bytes(bytes(data))
    assert copy.all_ticks() == {"nightly_identity": [], "nightly_target": [], "nightly_pairs": []}

    with build_schedule_context(instance=copy.instance) as context:
        [launch] = nightly_verify.evaluate_tick(context).run_requests
    assert nightly_verify.job_name == "verify_job" and launch.run_config == {}
    definitions = Definitions(jobs=[verify_job], resources={"settings": copy.settings}, executor=in_process_executor)
    result = definitions.resolve_job_def("verify_job").execute_in_process(instance=copy.instance)
    assert result.success
    warnings = [e.message for e in copy.instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any(f"identity/faces [hopper] {masks.parent}: damaged (masks.npy differs from its record)" in w for w in warnings)
    assert not masks.parent.exists()  # retired: never served again

    [success] = [e.dagster_event for e in copy.instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_SUCCESS)]
    context = build_run_status_sensor_context(sensor_name="rebuild_after_verify", dagster_event=success,
                                              dagster_instance=copy.instance,
                                              dagster_run=copy.instance.get_run_by_id(result.run_id),
                                              resources={"settings": copy.settings})
    [request] = rebuild_after_verify(context)  # the pair hopper|talk follows the identity run (pairs_after_role_runs)
    assert (request.job_name, request.partition_key) == ("identity_job", "hopper")
    assert request.tags["facepipe/nightly_reason"].startswith("identity/faces: no output yet")
    assert request.run_key.endswith(result.run_id)  # one request per content check, not one per partition for ever
