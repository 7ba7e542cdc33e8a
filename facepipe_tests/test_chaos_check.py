"""scripts/chaos_check.py, short: a tiny identity, target and pair built while SIGKILL lands in
decoding, a training and publishing; every kill is followed by the same command, nothing hangs,
and what is published is byte-identical to an uninterrupted build."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conftest import tiny_run_config

from facepipe.pairs import declare_pair
from facepipe.sample import astronaut_face, hopper_face, render_head_video

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "chaos_check.py"


@pytest.mark.slow
def test_a_build_killed_in_several_stages_finishes_byte_identical(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("chaos_check", SCRIPT)
    chaos_check = importlib.util.module_from_spec(spec)
    sys.modules["chaos_check"] = chaos_check  # its dataclasses look their module up
    spec.loader.exec_module(chaos_check)
    data = tmp_path / "data"
    render_head_video(hopper_face(160), data / "identities" / "hopper" / "hopper.mp4", n_frames=10, size=160)
    render_head_video(astronaut_face(160), data / "targets" / "talk" / "talk.mp4", n_frames=10, size=160, occluders=True)
    declare_pair(data, "hopper", "talk")
    config = tiny_run_config()
    for op, epochs in (("identity__identity_model", 40), ("target__xseg_model", 10), ("pair__lora_adapter", 60)):
        config["ops"][op]["config"]["epochs"] = epochs  # trainings long enough (seconds) for a kill to land inside
    (tmp_path / "config.json").write_text(json.dumps(config))
    status = chaos_check.main(["--data-root", str(data), "--config", str(tmp_path / "config.json"),
                               "--work", str(tmp_path / "work"), "--stages", "identity__frames,pair__lora_adapter,publish",
                               "--attempt-timeout", "300"])
    out = capsys.readouterr().out
    print(out)
    assert status == 0, out
    assert "kills: 3;" in out and "restarts: 3;" in out
    assert "byte-identical: 112 artifacts" in out  # every output of the tiny build (curated_faces included)
    log = (tmp_path / "work" / "chaos.log").read_text()
    assert "has no process any more (killed or crashed): marked failed, its training slot freed" in log
