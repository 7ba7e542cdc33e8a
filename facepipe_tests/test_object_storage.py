"""The artifact store on object storage: a real S3 endpoint (moto's server, over HTTP, the
`bucket` fixture) shared by "machines" that each have their own local cache folder."""

import json

import fsspec
import pytest

from facepipe.store import RECORD, ArtifactStore, MissingInput
from facepipe_tests.test_prep_pipeline import STAGES, add_clip, materialized, tiny_clip  # noqa: F401
from facepipe_tests.test_store import write_hello


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
