import json

import pytest

from facepipe.partitions import InvalidPartitionKey
from facepipe.store import ArtifactStore, MissingInput, atomic_write_bytes, content_hash, fingerprint


def write_hello(folder):
    (folder / "a.txt").write_text("hello")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(b"\x00\x01")
    return {"rows": 2}


def test_fingerprint_depends_on_code_config_and_inputs():
    base = fingerprint("1", {"max_frames": 10}, {"media": "abc"})
    assert base == fingerprint("1", {"max_frames": 10}, {"media": "abc"})
    assert base != fingerprint("2", {"max_frames": 10}, {"media": "abc"})
    assert base != fingerprint("1", {"max_frames": 11}, {"media": "abc"})
    assert base != fingerprint("1", {"max_frames": 10}, {"media": "abd"})


def test_build_then_reuse_without_calling_write(tmp_path):
    store = ArtifactStore(tmp_path)
    first = store.build("identity/frames", "hopper", "fp1", write_hello)
    assert not first.reused and first.metadata == {"rows": 2}
    calls = []
    second = store.build("identity/frames", "hopper", "fp1", lambda out: calls.append(out))
    assert second.reused and calls == []
    assert second.content_hash == first.content_hash and second.metadata == {"rows": 2}
    assert store.current("identity/frames", "hopper").fingerprint == "fp1"


def test_content_hash_is_of_content_not_location(tmp_path):
    store = ArtifactStore(tmp_path)
    a = store.build("x", "p", "fp1", write_hello)
    b = store.build("x", "q", "fp2", write_hello)
    assert a.content_hash == b.content_hash == content_hash(a.path)[0]


def test_a_run_that_loses_the_race_for_a_fingerprint_reports_the_winner(tmp_path):
    store, other_run = ArtifactStore(tmp_path), ArtifactStore(tmp_path)

    def slow(folder):
        (folder / "a.txt").write_text("mine")
        winner.append(other_run.build("x", "p", "fp1", lambda out: (out / "a.txt").write_text("theirs") and None))

    winner = []
    artifact = store.build("x", "p", "fp1", slow)
    assert artifact.content_hash == winner[0].content_hash and (artifact.path / "a.txt").read_text() == "theirs"
    assert store.current("x", "p").content_hash == winner[0].content_hash
    assert sorted(p.name for p in (tmp_path / "x" / "p").iterdir()) == ["current.json", "fp1"]  # no temporaries left


def test_failed_build_leaves_no_output_and_keeps_previous_current(tmp_path):
    store = ArtifactStore(tmp_path)
    good = store.build("x", "p", "fp1", write_hello)

    def broken(folder):
        (folder / "partial.bin").write_bytes(b"half")
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError):
        store.build("x", "p", "fp2", broken)
    assert store.lookup("x", "p", "fp2") is None
    assert store.current("x", "p").fingerprint == good.fingerprint
    leftovers = [p.name for p in (tmp_path / "x" / "p").iterdir()]
    assert sorted(leftovers) == ["current.json", "fp1"]


def test_missing_input_names_asset_and_partition(tmp_path):
    with pytest.raises(MissingInput, match="'identity/faces'.*'hopper'.*materialize"):
        ArtifactStore(tmp_path).current("identity/faces", "hopper")


def test_pair_partitions_nest_identity_then_target(tmp_path):
    store = ArtifactStore(tmp_path)
    assert store.partition_dir("pair/lora_adapter", "hopper|astronaut") == tmp_path / "pair" / "lora_adapter" / "hopper" / "astronaut"


@pytest.mark.parametrize("key", ["../escape", "a/b", "a|..", "a|b|c", "a,b", "", "Upper", ".hidden", "a|"])
def test_hostile_partition_keys_cannot_escape_the_store(tmp_path, key):
    with pytest.raises(InvalidPartitionKey):
        ArtifactStore(tmp_path).build("x", key, "fp", write_hello)
    assert not any(tmp_path.rglob("*.txt"))


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "current.json"
    atomic_write_bytes(target, b'{"a":1}')
    atomic_write_bytes(target, b'{"a":2}')
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["current.json"]


def test_a_file_url_root_is_a_local_store(tmp_path):
    store = ArtifactStore(f"file://{tmp_path}")
    assert store.remote is None and store.root == tmp_path
    assert store.build("x", "p", "fp1", write_hello).path == tmp_path / "x" / "p" / "fp1"
