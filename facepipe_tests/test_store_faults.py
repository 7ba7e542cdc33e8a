"""The store under faults: read-only (cache hits still work; a build says so once, no retry),
full (named with MB needed and free, no retry, nothing left behind), and damaged outputs
(never served: a cache hit checks presence and sizes, `facepipe verify` checks content)."""

from __future__ import annotations

import os

import cv2
import pytest

from facepipe.assets.failures import RETRY_DELAY_ENV
from facepipe.automation.nightly import World, role_changes
from facepipe.resources import FacepipeSettings
from facepipe.store import ArtifactStore


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setenv(RETRY_DELAY_ENV, "0")


def events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def a_face_image(path) -> None:
    from facepipe.sample import hopper_face

    cv2.imwrite(str(path), hopper_face(160))


def media_and_frames(project, role="identity"):
    return project.assets[role][:2]


def test_a_read_only_store_serves_cache_hits_and_a_build_fails_once_naming_it(project, read_only):
    folder = project.folder("identity", "jane")
    a_face_image(folder / "a.jpg")
    assert project.materialize("identity", "jane", assets=media_and_frames(project)).success
    read_only(project.store)
    hits = project.materialize("identity", "jane", assets=media_and_frames(project))  # current.json was rewritten
    assert hits.success
    assert [e.event_specific_data.materialization.metadata["cache"].value for e in events(hits, "ASSET_MATERIALIZATION")] \
        == ["hit", "hit"]
    a_face_image(folder / "b.jpg")  # new media: the media step must build, in a store it cannot write
    failed = project.materialize("identity", "jane", assets=media_and_frames(project), raise_on_error=False)
    assert not failed.success and not events(failed, "STEP_UP_FOR_RETRY")  # was retried as "transient"
    [failure] = events(failed, "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert f"identity/media [jane]: cannot write in the store at {project.store}: " in message
    assert "make it writable or set FACEPIPE_STORE to a writable folder" in message


def metadata_of(result, asset: str) -> dict:
    [event] = [e for e in events(result, "ASSET_MATERIALIZATION")
               if e.event_specific_data.materialization.asset_key.to_user_string() == asset]
    return {k: v.value if hasattr(v, "value") else v for k, v in event.event_specific_data.materialization.metadata.items()}


@pytest.fixture
def faces_built(project):
    """identity 'jane' prepared up to faces (two stills of a face)."""
    folder = project.folder("identity", "jane")
    a_face_image(folder / "a.jpg")
    a_face_image(folder / "b.png")
    assert project.materialize("identity", "jane").success
    return project


def test_a_truncated_output_is_not_a_cache_hit_and_is_rebuilt(faces_built):
    project = faces_built
    store = ArtifactStore(project.store)
    faces = store.current("identity/faces", "jane")
    crops = faces.path / "faces.npy"
    good = crops.read_bytes()
    crops.write_bytes(good[: len(good) // 3])
    # a consumer reading it: one line naming the damage, not "mmap length is greater than file size"
    failed = project.materialize("identity", "jane", assets=[project.curation["identity"]], raise_on_error=False)
    [failure] = events(failed, "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert f"the output of 'identity/faces' for partition 'jane' at {faces.path} is damaged (faces.npy: " \
           f"{len(good) // 3} bytes, recorded {len(good)})" in message and "materialize 'identity/faces' again" in message
    world = World.from_settings(FacepipeSettings(data_root=str(project.data), store_root=str(project.store)), {})
    assert role_changes(world, "identity", "jane")["identity/faces"] == \
        f"output damaged (faces.npy: {len(good) // 3} bytes, recorded {len(good)})"  # the nightly rebuilds it
    rebuilt = project.materialize("identity", "jane")
    assert metadata_of(rebuilt, "identity/faces")["cache"] == "built"
    assert metadata_of(rebuilt, "identity/landmarks")["cache"] == "hit"
    assert crops.read_bytes() == good
    warnings = [entry.user_message for entry in project.instance.all_logs(rebuilt.run_id) if entry.level >= 30]
    assert any(f"{faces.path} is damaged (faces.npy: {len(good) // 3} bytes, recorded {len(good)}); rebuilding it" in w
               for w in warnings), warnings


def test_verify_finds_damaged_content_removes_it_and_the_next_build_restores_it(faces_built, monkeypatch, capsys):
    from facepipe import cli

    project = faces_built
    monkeypatch.setenv("FACEPIPE_STORE", str(project.store))
    monkeypatch.setenv("DAGSTER_HOME", str(project.root / "home"))
    assert cli.main(["--data-root", str(project.data), "verify"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"store {project.store}: 5 outputs, all intact"
    faces = ArtifactStore(project.store).current("identity/faces", "jane")
    data = bytearray((faces.path / "masks.npy").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: a cache hit's cheap check cannot see it
    (faces.path / "masks.npy").write_bytes(bytes(data))
    assert metadata_of(project.materialize("identity", "jane"), "identity/faces")["cache"] == "hit"
    assert cli.main(["--data-root", str(project.data), "verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [f"identity/faces [jane] {faces.path}: damaged (masks.npy differs from its record); removed, "
                        "`facepipe build` or the nightly rebuilds it",
                        f"store {project.store}: 5 outputs, 1 damaged (removed)"]
    rebuilt = project.materialize("identity", "jane")
    assert metadata_of(rebuilt, "identity/faces")["cache"] == "built"
    assert metadata_of(rebuilt, "identity/faces")["content_hash"] == faces.content_hash


def no_temporaries_in(folder) -> bool:
    return not [p for p in folder.rglob(".tmp-*")]


def the_one_failure_on_a_small_disk(project, small_disk, megabytes: float):
    """Build an identity of 8 photos into a store on a disk of `megabytes`: the step failure, not retried."""
    small_disk(project.store, megabytes)
    folder = project.folder("identity", "jane")
    for number in range(8):
        a_face_image(folder / f"{number}.png")
    result = project.materialize("identity", "jane", raise_on_error=False)
    assert not result.success and not events(result, "STEP_UP_FOR_RETRY")
    [failure] = events(result, "STEP_FAILURE")
    return failure


def test_a_full_disk_while_writing_faces_is_named_not_retried_and_leaves_nothing(project, small_disk):
    """Writing faces through memory maps on a full disk killed the process with SIGBUS."""
    failure = the_one_failure_on_a_small_disk(project, small_disk, 3)
    assert failure.step_key == "identity__faces"
    message = failure.event_specific_data.error.message
    assert f"identity/faces [jane]: the store at {project.store} is full (3.0 MB needed, " in message  # 2.0 MB of arrays + 1 MB spare
    assert "MB free): free some space or set FACEPIPE_STORE to a larger disk, then run again" in message
    assert no_temporaries_in(project.store)


def test_a_full_disk_while_writing_frames_is_named_not_retried_and_leaves_nothing(project, small_disk):
    """It said only "could not write frame ..." three times, as a transient error."""
    message = the_one_failure_on_a_small_disk(project, small_disk, 0.12).event_specific_data.error.message  # the JPEG frames outgrow it
    assert f"identity/frames [jane]: the store at {project.store} is full (" in message and " MB needed, " in message
    assert no_temporaries_in(project.store)
    assert ArtifactStore(project.store).current_record("identity/media", "jane")  # what was written before stays


def test_a_full_disk_under_numpys_short_write_is_named_not_retried(project, small_disk):
    """np.save on a full disk raises an OSError without errno ("11472 requested and 992 written"):
    it was retried as a transient error. On 0.25 MB the frames fit and the landmark arrays do not."""
    failure = the_one_failure_on_a_small_disk(project, small_disk, 0.25)
    message = failure.event_specific_data.error.message
    assert failure.step_key in ("identity__landmarks", "identity__smoothed_landmarks"), failure.step_key
    assert f"the store at {project.store} is full (" in message and "MB free): free some space" in message
    assert no_temporaries_in(project.store)


def test_a_checkpoint_save_on_a_full_disk_leaves_no_temporary_folder(tmp_path, small_disk):
    import torch

    from facepipe.disk import NoSpace
    from facepipe.train.checkpoints import save_checkpoint

    small_disk(tmp_path / "ckpt", 1)
    with pytest.raises(NoSpace) as raised:
        save_checkpoint(tmp_path / "ckpt", epochs_completed=1, step_in_epoch=0,
                        weights={"w": torch.zeros(512, 1024)}, state={"step": 1}, resume_key="k", check_state_loads=False)
    assert raised.value.needed > raised.value.free
    assert list((tmp_path / "ckpt").iterdir()) == []  # the .tmp-ckpt-* folder kept the disk full


def test_temporaries_of_killed_runs_are_swept_and_live_ones_kept(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = ArtifactStore(tmp_path / "store")
    parent = store.partition_dir("identity/faces", "jane")
    host = socket.gethostname()
    killed = parent / f".tmp-0123abcd~{host}~{dead.pid}~x1y2"
    live = parent / f".tmp-4567ef01~{host}~{os.getpid()}~z3w4"
    old = parent / ".tmp-89ab-oldformat"
    for folder in (killed, live, old):
        folder.mkdir(parents=True)
        (folder / "faces.npy").write_bytes(b"0" * 1000)
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    removed = store.sweep()
    assert sorted(path.name for path, _size in removed) == sorted([killed.name, old.name])
    assert live.is_dir() and not killed.exists() and not old.exists()
    assert {size for _path, size in removed} == {1000}


def test_build_sweeps_what_killed_runs_left_in_the_store_and_models_folder(tmp_path, monkeypatch, capsys):
    import socket
    import subprocess
    import sys

    from facepipe import cli

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = f"~{socket.gethostname()}~{dead.pid}~abcd"
    left = [tmp_path / "store" / "identity" / "faces" / "jane" / f".tmp-0123{tag}",
            tmp_path / "models" / "trained" / f".tmp-jane_talk.dfm{tag}"]
    left[0].mkdir(parents=True)
    (left[0] / "faces.npy").write_bytes(b"0" * 2048)
    left[1].parent.mkdir(parents=True)
    left[1].write_bytes(b"0" * 1024)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEPIPE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("FACEPIPE_MODELS", str(tmp_path / "models"))
    (tmp_path / "data" / "identities" / "jane").mkdir(parents=True)  # no media: the run itself fails at once
    cli.main(["--data-root", str(tmp_path / "data"), "build", "--partition", "jane"])
    assert ("removed 2 temporary file(s) and folder(s) left by killed runs in the store and models folder (0.0 MB freed)"
            in capsys.readouterr().out)
    assert not any(path.exists() for path in left)
