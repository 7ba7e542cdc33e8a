import pytest

from facepipe.partitions import InvalidPartitionKey, discover, pair_partitions, validate_key


@pytest.mark.parametrize("key", ["hopper", "a", "0", "jane_doe-2", "x" * 64])
def test_valid_keys(key):
    assert validate_key(key) == key


@pytest.mark.parametrize("key", ["", "Jane", "jane doe", "-x", "_x", "a|b", "a,b", "a/b", "..", "é", "x" * 65, "a\n"])
def test_invalid_keys_are_rejected_with_a_fix(key):
    with pytest.raises(InvalidPartitionKey, match="rename the folder"):
        validate_key(key)


def test_discover_skips_bad_folders_and_files(tmp_path):
    root = tmp_path / "identities"
    for name in ["zed", "alice", "Bad Name", "x|y", ".hidden"]:
        (root / name).mkdir(parents=True)
    (root / "notes.txt").write_text("hi")
    found = discover(tmp_path, "identity")
    assert found.keys == ["alice", "zed"]
    assert sorted(name for name, _ in found.rejected) == ["Bad Name", "notes.txt", "x|y"]
    assert discover(tmp_path, "target").keys == []


def test_pair_keys_put_identity_first():
    assert pair_partitions.partitions_defs[0].name == "identity"
