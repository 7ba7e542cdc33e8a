"""The artifact store on object storage: a real S3 endpoint (moto's server, over HTTP, the
`bucket` fixture) shared by "machines" that each have their own local cache folder."""

import json
import shutil
from pathlib import PurePosixPath

import fsspec
import pytest

from facepipe import checkpoint_mirror
from facepipe.assets.xseg import xseg_model
from facepipe.store import RECORD, ArtifactStore, MissingInput
from facepipe.train import train
from facepipe.train.loop import checkpoints_dir_of
from facepipe_tests.conftest import tiny_run_config
from facepipe_tests.test_prep_pipeline import STAGES, add_clip, materialized, tiny_clip  # noqa: F401
from facepipe_tests.test_store import write_hello
from facepipe_tests.test_train_engine import (  # noqa: F401
    ToyTask,
    assert_same_as_straight,
    straight,
    toy_config,
)
from facepipe_tests.test_xseg_pipeline import clip  # noqa: F401


def remote_file(url, *parts):
    fs = fsspec.filesystem("s3")
    return fs, "/".join([url.removeprefix("s3://"), *parts])


def test_a_second_machine_reuses_what_the_first_built(bucket, tmp_path):
    first = ArtifactStore(bucket, cache=tmp_path / "a").build("identity/frames", "hopper", "fp1", write_hello)
    assert not first.reused

    calls = []
    second_machine = ArtifactStore(bucket, cache=tmp_path / "b")
    reused = second_machine.build("identity/frames", "hopper", "fp1", lambda out: calls.append(out))
    assert reused.reused and calls == [] and reused.metadata == {"rows": 2}
    assert reused.path.is_relative_to(tmp_path / "b") and reused.path.parts[-4:] == ("identity", "frames", "hopper", "fp1")
    assert (reused.path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert reused.content_hash == first.content_hash

    third_machine = ArtifactStore(bucket, cache=tmp_path / "c")
    assert third_machine.current("identity/frames", "hopper").fingerprint == "fp1"
    # The nightly automation only reads records: nothing else is downloaded for that.
    fourth_machine = ArtifactStore(bucket, cache=tmp_path / "d")
    assert fourth_machine.current_record("identity/frames", "hopper")["content_hash"] == first.content_hash
    assert not (tmp_path / "d").exists()


def test_pointer_moves_only_after_a_complete_upload(bucket, tmp_path, monkeypatch):
    store = ArtifactStore(bucket, cache=tmp_path / "a")
    store.build("x", "p", "fp1", write_hello)

    real_upload = store.remote.upload

    def record_upload_fails(folder, relative, names):
        if names == [RECORD]:
            raise ConnectionError("network dropped")
        real_upload(folder, relative, names)

    monkeypatch.setattr(store.remote, "upload", record_upload_fails)
    with pytest.raises(ConnectionError):
        store.build("x", "p", "fp2", lambda out: (out / "a.txt").write_text("new") and None)
    elsewhere = ArtifactStore(bucket, cache=tmp_path / "b")
    assert elsewhere.current("x", "p").fingerprint == "fp1"  # still the last complete one
    assert elsewhere.lookup("x", "p", "fp2") is None  # files without a record are not an artifact

    monkeypatch.setattr(store.remote, "upload", real_upload)
    store.build("x", "p", "fp2", lambda out: pytest.fail("built again although cached here"))
    assert elsewhere.current("x", "p").fingerprint == "fp2"  # the retry uploaded the local copy


def test_a_damaged_remote_artifact_is_rebuilt_not_trusted(bucket, tmp_path):
    built = ArtifactStore(bucket, cache=tmp_path / "a").build("x", "p", "fp1", write_hello)
    fs, path = remote_file(bucket, "x", "p", "fp1", built.content_hash, "a.txt")
    fs.pipe_file(path, b"tampered")

    other = ArtifactStore(bucket, cache=tmp_path / "b")
    assert other.lookup("x", "p", "fp1") is None
    with pytest.raises(MissingInput, match="does not match its record"):
        other.current("x", "p")
    rebuilt = other.build("x", "p", "fp1", write_hello)
    assert not rebuilt.reused
    assert fs.cat_file(path) == b"hello"  # the rebuild replaced the damaged copy
    assert ArtifactStore(bucket, cache=tmp_path / "c").lookup("x", "p", "fp1").content_hash == rebuilt.content_hash


def test_records_and_pointers_live_in_the_bucket(bucket, tmp_path):
    store = ArtifactStore(bucket, cache=tmp_path / "a")
    artifact = store.build("pair/lora_adapter", "hopper|astronaut", "fp1", write_hello)
    fs, pointer = remote_file(bucket, "pair", "lora_adapter", "hopper", "astronaut", "current.json")
    assert json.loads(fs.cat_file(pointer)) == {"fingerprint": "fp1", "content_hash": artifact.content_hash}
    assert not (store.partition_dir("pair/lora_adapter", "hopper|astronaut") / "current.json").exists()
    # one cache folder serves several buckets without mixing them
    assert ArtifactStore(bucket + "-other", cache=tmp_path / "a").root != store.root


def test_two_machines_that_built_one_fingerprint_differently_end_up_on_the_same_bytes(bucket, tmp_path):
    """Say a GPU build is not bit-identical and two machines build the same fingerprint at once."""
    first, second = ArtifactStore(bucket, cache=tmp_path / "a"), ArtifactStore(bucket, cache=tmp_path / "b")
    from_second = second.build("x", "p", "fp1", lambda out: (out / "a.txt").write_text("second") and None)
    first.lookup = lambda *args: None  # its lookup ran before that upload
    from_first = first.build("x", "p", "fp1", lambda out: (out / "a.txt").write_text("first") and None)
    del first.lookup  # (the instance attribute; the method is back)
    assert from_first.content_hash != from_second.content_hash
    # Neither upload overwrote the other's files; the last record names a complete set ...
    fs, _ = remote_file(bucket)
    for artifact, text in ((from_first, b"first"), (from_second, b"second")):
        assert fs.cat_file(remote_file(bucket, "x", "p", "fp1", artifact.content_hash, "a.txt")[1]) == text
    # ... and the machine that lost switches to it instead of keeping its own bytes.
    switched = second.current("x", "p")
    assert switched.content_hash == from_first.content_hash and (switched.path / "a.txt").read_text() == "first"


def test_a_remote_root_needs_a_cache_folder(bucket):
    with pytest.raises(ValueError, match="FACEPIPE_STORE_CACHE"):
        ArtifactStore(bucket)


def test_materializations_share_one_bucket_across_machines(project, tiny_clip, bucket, tmp_path):  # noqa: F811
    """The prep chain built on one machine is a set of cache hits on another with an empty cache."""
    add_clip(project, tiny_clip)
    project.store_root = bucket
    project.store_cache = str(tmp_path / "machine-a")
    first = materialized(project.materialize("identity", "tiny"))
    assert set(first) == set(STAGES) and all(m["cache"] == "built" for m in first.values())

    project.store_cache = str(tmp_path / "machine-b")
    second = materialized(project.materialize("identity", "tiny"))
    assert all(m["cache"] == "hit" for m in second.values())
    assert {k: m["content_hash"] for k, m in second.items()} == {k: m["content_hash"] for k, m in first.items()}
    faces = ArtifactStore(bucket, cache=tmp_path / "machine-b").partition_dir("identity/faces", "tiny")
    assert (faces / first["faces"]["fingerprint"] / "faces.npy").is_file()


def test_a_training_continues_on_another_machine_from_the_mirrored_checkpoints(bucket, tmp_path, straight):  # noqa: F811
    remote = ArtifactStore(bucket, cache=tmp_path / "cache").remote
    relative = PurePosixPath("_runs", "toy", "p", toy_config().resume_key, "checkpoints")

    def mirror(folder):
        checkpoint_mirror.push(remote, relative, folder)

    # Machine A trains 2 of the 4 epochs, mirroring after every save; then it is gone.
    first = train(ToyTask(), toy_config(epochs=2), tmp_path / "machine-a", log=lambda line: None, on_checkpoint=mirror)
    local_a = sorted(p.name for p in first.checkpoints_dir.iterdir())
    assert remote.folders(relative) == local_a == ["ckpt-e0001-s000000", "ckpt-e0002-s000000"]

    # Machine B, empty disk: fetches the newest and finishes bit-identical to an uninterrupted run.
    checkpoints_b = checkpoints_dir_of(tmp_path / "machine-b", toy_config())
    # (a newer one whose upload died half way, manifest missing, is passed over)
    remote.upload(first.checkpoints_dir / "ckpt-e0002-s000000", relative / "ckpt-e0003-s000000", ["model.safetensors"])
    assert checkpoint_mirror.pull(remote, relative, checkpoints_b) == "ckpt-e0002-s000000"
    assert sorted(p.name for p in checkpoints_b.iterdir()) == ["ckpt-e0002-s000000"]
    assert checkpoint_mirror.pull(remote, relative, checkpoints_b) is None  # already as far
    lines = []
    result = train(ToyTask(), toy_config(), tmp_path / "machine-b", log=lines.append, on_checkpoint=mirror)
    assert any(line.startswith("resumed at epoch 3/4") for line in lines)
    assert_same_as_straight(result, straight)
    # What B pruned is gone from the bucket too (keep_last=3 of 4 epoch checkpoints).
    assert remote.folders(relative) == sorted(p.name for p in result.checkpoints_dir.iterdir()) == \
        ["ckpt-e0002-s000000", "ckpt-e0003-s000000", "ckpt-e0004-s000000"]
    shutil.rmtree(result.checkpoints_dir / "ckpt-e0002-s000000")
    mirror(result.checkpoints_dir)
    assert "ckpt-e0002-s000000" not in remote.folders(relative)


def test_the_xseg_asset_resumes_on_another_machine(project, clip, bucket, tmp_path):  # noqa: F811
    folder = project.folder("target", "talk")
    shutil.copy(clip / "talk.mp4", folder / "talk.mp4")
    project.store_root = bucket
    assets = [*project.curated["target"], xseg_model]
    config = tiny_run_config("target__xseg_model")
    project.store_cache = str(tmp_path / "machine-a")
    project.materialize("target", "talk", run_config=config, assets=assets)

    config["ops"]["target__xseg_model"]["config"]["epochs"] += 1  # asked for one more epoch, elsewhere
    project.store_cache = str(tmp_path / "machine-b")
    result = project.materialize("target", "talk", run_config=config, assets=assets)
    built = materialized(result, "target")
    assert built["xseg_model"]["cache"] == "built" and built["xseg_model"]["resumed_from_epoch"] == 1
    logs = [e.message for e in project.instance.all_logs(result.run_id) if e.message]
    assert any(line.startswith("fetched checkpoint ckpt-e0001-s000000 from s3://") for line in logs)
