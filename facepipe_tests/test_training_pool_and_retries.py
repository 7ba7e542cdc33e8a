"""One training at a time (the "training" pool and the instance's limit), and which failures
are retried: transient ones are, bad input and interrupts are not."""

import errno
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, asset, materialize
from dagster._core.errors import DagsterExecutionInterruptedError

from facepipe.assets.failures import RETRY_DELAY_ENV, TRANSIENT_RETRIES, failure_policy, is_transient
from facepipe.assets.identity import identity_model
from facepipe.assets.training import POOL_TAG, TRAINING_POOL
from facepipe.definitions import defs
from facepipe.labels import UserMaskError
from facepipe.media import MediaError
from facepipe.assets.stage import STORE_INPUT, store_input
from facepipe.resources import FacepipeSettings
from facepipe.store import MissingInput

PROJECT_INSTANCE_YAML = Path(__file__).resolve().parent.parent / ".dagster_home" / "dagster.yaml"
TRAINING_ASSETS = {"identity/identity_model", "target/xseg_model", "pair/lora_adapter"}


def step_events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setenv(RETRY_DELAY_ENV, "0")


def test_training_assets_share_the_training_pool_and_data_prep_is_unpooled():
    # The pool is claimed by the training assets themselves (facepipe.slots), not by Dagster's
    # executor (whose wait spins, is silent and ignores Ctrl+C): no op has a Dagster pool.
    ops = {key.to_user_string(): defs.resolve_assets_def(key).op for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert len(ops) == 18  # 6 per role (media ... faces, curated_faces), 2 identity, 2 target, 2 pair
    assert {name for name, op in ops.items() if op.tags.get(POOL_TAG) == TRAINING_POOL} == TRAINING_ASSETS
    assert {op.pool for op in ops.values()} == {None}


def test_every_asset_runs_under_the_failure_policy_and_none_under_dagster_retry_policy():
    # Dagster's RetryPolicy would also retry an interrupted step (a cancelled run): not used.
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        op = defs.resolve_assets_def(key).op
        assert op.retry_policy is None, key
        assert getattr(op.compute_fn.decorated_fn, "retries_transient_errors", None) == TRANSIENT_RETRIES, key


def test_what_counts_as_transient():
    assert is_transient(OSError(errno.EIO, "Input/output error"))
    assert is_transient(TimeoutError("timed out")) and is_transient(ConnectionResetError())
    assert is_transient(RuntimeError("CUDA error: an illegal memory access was encountered"))
    for error in (FileNotFoundError("x"), PermissionError("x"), MediaError("x"), MissingInput("x"), UserMaskError("x"),
                  ValueError("bad config"), RuntimeError("shapes do not match")):
        assert not is_transient(error), error


def test_project_instance_limits_training_to_one_and_monitors_runs(tmp_path):
    shutil.copy(PROJECT_INSTANCE_YAML, tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0  # a cancelled run frees its slot
        assert instance.run_retries_enabled and not instance.run_retries_retry_on_asset_or_op_failure  # crashes only


def test_bad_input_fails_once_and_names_partition_file_and_fix(project):
    (project.folder("identity", "notes") / "notes.txt").write_text("not media")
    result = project.materialize("identity", "notes", raise_on_error=False)
    assert not result.success and not step_events(result, "STEP_UP_FOR_RETRY")
    [failure] = step_events(result, "STEP_FAILURE")
    error = str(failure.event_specific_data.error)
    assert "identity 'notes'" in error and "notes.txt" in error and "Add videos" in error

    # an upstream never built: a Failure naming what to materialize, not retried
    frames = next(a for a in project.assets["identity"] if a.key.to_user_string() == "identity/frames")
    result = project.materialize("identity", "notes", raise_on_error=False, assets=[frames])
    assert not step_events(result, "STEP_UP_FOR_RETRY")
    [failure] = step_events(result, "STEP_FAILURE")
    error = str(failure.event_specific_data.error)
    assert "identity/frames [notes]" in error and "materialize 'identity/media' for partition 'notes'" in error


def test_transient_errors_are_retried_then_give_up():
    attempts = []

    @asset
    @failure_policy
    def flaky(context) -> None:
        attempts.append(context.retry_number)
        if len(attempts) == 1:
            raise OSError(errno.EIO, "Input/output error")

    result = materialize([flaky], instance=DagsterInstance.ephemeral())
    assert result.success and attempts == [0, 1] and len(step_events(result, "STEP_UP_FOR_RETRY")) == 1

    @asset
    @failure_policy
    def broken_disk(context) -> None:
        attempts.append(context.retry_number)
        raise OSError(errno.EIO, "Input/output error")

    attempts.clear()
    result = materialize([broken_disk], instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success and attempts == list(range(TRANSIENT_RETRIES + 1))


def test_an_interrupted_step_is_not_retried():
    attempts = []

    @asset
    @failure_policy
    def cancelled(context) -> None:
        attempts.append(context.retry_number)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl+C or terminating the run delivers
        time.sleep(5)

    with pytest.raises((KeyboardInterrupt, DagsterExecutionInterruptedError)):
        materialize([cancelled], instance=DagsterInstance.ephemeral())
    assert attempts == [0]


def test_a_training_step_waits_for_the_slot_and_gives_it_back_and_a_cache_hit_does_not_wait(project, tmp_path):
    import cv2

    from facepipe.sample import hopper_face, render_head_frames
    from facepipe_tests.conftest import tiny_run_config

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_INSTANCE_YAML, home / "dagster.yaml")
    folder = project.folder("identity", "jane")
    frames, _ = render_head_frames(hopper_face(160), 8, size=160)  # distinct poses: curation keeps every one
    for number, frame in enumerate(frames):  # 8 faces: 6 to train on, 2 held out for the metrics
        cv2.imwrite(str(folder / f"{number}.png"), frame)
    settings = FacepipeSettings(data_root=str(project.data), store_root=str(project.store), models_root=str(project.models))
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("identity", ["jane"])

        tiny = tiny_run_config("identity__identity_model")

        def train():
            return materialize([*project.curated["identity"], identity_model], instance=instance, partition_key="jane",
                               resources={"settings": settings, STORE_INPUT: store_input},
                               run_config=tiny, raise_on_error=False)

        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("training")
        assert storage.claim_concurrency_slot("training", "another-run", "another_training_step").is_claimed
        outcome = {}
        run = threading.Thread(target=lambda: outcome.update(result=train()))
        run.start()
        deadline = time.monotonic() + 300
        while not [p for p in storage.get_concurrency_info("training").pending_steps if p.run_id != "another-run"]:
            assert time.monotonic() < deadline and run.is_alive()
            time.sleep(0.2)
        info = storage.get_concurrency_info("training")
        assert info.slot_count == 1 and info.active_run_ids == {"another-run"}
        time.sleep(2)
        assert run.is_alive()  # still waiting: one training at a time
        storage.free_concurrency_slots_for_run("another-run")
        run.join(300)
        assert outcome["result"].success  # it trained once the slot was free
        assert storage.get_concurrency_info("training").active_slot_count == 0
        # everything cached: no training, so no slot needed, even while another run holds it
        assert storage.claim_concurrency_slot("training", "another-run", "another_training_step").is_claimed
        again = train()
        assert again.success and all(e.event_specific_data.materialization.metadata["cache"].value == "hit"
                                     for e in step_events(again, "ASSET_MATERIALIZATION"))
