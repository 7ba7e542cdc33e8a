"""scripts/rebuild_check.py: two cold builds of a tiny identity, target and pair are byte-identical,
and a changed, missing or extra artifact is reported by name."""

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import tiny_run_config

from facepipe.pairs import declare_pair
from facepipe.sample import astronaut_face, hopper_face, render_head_video

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rebuild_check.py"



def load_script():
    spec = importlib.util.spec_from_file_location("rebuild_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rebuild_check():
    return load_script()


@pytest.fixture
def tiny_data(tmp_path):
    data = tmp_path / "data"
    render_head_video(hopper_face(160), data / "identities" / "hopper" / "hopper.mp4", n_frames=10, size=160)
    render_head_video(astronaut_face(160), data / "targets" / "talk" / "talk.mp4", n_frames=10, size=160, occluders=True)
    declare_pair(data, "hopper", "talk")
    return data


@pytest.mark.slow
def test_two_cold_builds_are_byte_identical_and_a_changed_file_is_named(rebuild_check, tiny_data, tmp_path, capsys):
    work = tmp_path / "work"
    status = rebuild_check.main(["--data-root", str(tiny_data), "--run-config", json.dumps(tiny_run_config()),
                                 "--work", str(work), "--keep"])
    out = capsys.readouterr().out
    assert status == 0, out
    hashes = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.splitlines() if "  models/" in line or "  store/" in line}
    assert f"bit-identical: {len(hashes)} artifacts" in out
    # every stage of the graph is covered, through the store's current outputs and the registry
    for name in ("models/trained/hopper_talk.dfm", "models/trained/index.json", "models/trained/talk_xseg.onnx",
                 "models/identities/hopper.json", "store/identity/identity_profile/hopper/profile.json",
                 "store/pair/lora_adapter/hopper/talk/adapter.safetensors", "store/target/target_masks/talk/masks.npy",
                 "store/identity/frames/hopper/current.json", "store/identity/curated_faces/hopper/curation.json",
                 "store/target/curated_faces/talk/faces.npy"):
        assert name in hashes, f"{name} not compared"
    assert not any("_artifact.json" in name or "/_runs/" in name for name in hashes)

    # the comparison fails on one changed byte, a missing file and an extra one, naming each
    build1, build2 = (rebuild_check.artifact_hashes(work / b / "store", work / b / "models") for b in ("build1", "build2"))
    assert build1 == build2 == hashes
    dfm = work / "build2" / "models" / "trained" / "hopper_talk.dfm"
    blob = bytearray(dfm.read_bytes())
    blob[len(blob) // 2] ^= 1
    dfm.write_bytes(bytes(blob))
    (work / "build2" / "models" / "identities" / "hopper.json").unlink()
    (work / "build2" / "models" / "trained" / "stray.onnx").write_bytes(b"x")
    lines = rebuild_check.differences(build1, rebuild_check.artifact_hashes(work / "build2" / "store", work / "build2" / "models"))
    assert [line.split(":")[0] for line in lines] == ["only in build 1", "differs", "only in build 2"]
    assert "models/identities/hopper.json" in lines[0] and "models/trained/hopper_talk.dfm" in lines[1]
    assert "models/trained/stray.onnx" in lines[2]


def test_an_output_whose_fingerprint_differs_is_one_named_difference(rebuild_check, tmp_path):
    for build, fingerprint in (("a", "f" * 32), ("b", "e" * 32)):
        output = tmp_path / build / "store" / "identity" / "media" / "jane" / fingerprint
        output.mkdir(parents=True)
        (output / "media.json").write_text("{}")
        (output / "_artifact.json").write_text(json.dumps({"versions": build}))  # never compared
        (output.parent / "current.json").write_text(json.dumps({"fingerprint": fingerprint, "content_hash": "0"}))
        (tmp_path / build / "store" / "_runs" / "ckpt").mkdir(parents=True)
        (tmp_path / build / "store" / "_runs" / "ckpt" / "current.json").write_text(build)  # working state
    first = rebuild_check.artifact_hashes(tmp_path / "a" / "store", tmp_path / "a" / "models")
    second = rebuild_check.artifact_hashes(tmp_path / "b" / "store", tmp_path / "b" / "models")
    assert sorted(first) == ["store/identity/media/jane/current.json", "store/identity/media/jane/media.json"]
    assert rebuild_check.differences(first, second) == [
        f"differs: store/identity/media/jane/current.json  {first['store/identity/media/jane/current.json'][:16]}"
        f" != {second['store/identity/media/jane/current.json'][:16]}"
    ]
