"""The `facepipe` command: run-config presets and files (checked before anything runs, shown in the
run log, applied to the runs) and the committed data/ layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import validate_run_config

from facepipe import cli
from facepipe.assets.training import RUNS_ALONE_TAG
from facepipe.definitions import defs
from facepipe.store import ArtifactStore
from facepipe_tests.conftest import TINY_TRAINING

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def project_env(tmp_path, monkeypatch):
    """A throwaway instance, store and models folder; returns the data root (not created)."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("FACEPIPE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("FACEPIPE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("FACEPIPE_DATA", str(tmp_path / "data"))  # main() sets it; restored after the test
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


@pytest.mark.parametrize("args, expected", [
    (["build", "--preset", "qualty"], "facepipe: no preset 'qualty' (presets: demo, gpu, quality)"),
    (["build", "--config", "typo.yaml"], "facepipe: config typo.yaml: identity__identity_model: no field 'epoch' (its fields:"),
    (["build", "--config", "strange_op.yaml"], "facepipe: config strange_op.yaml: op 'xseg' belongs to no job"),
    (["demo", "--config", "wrong_type.yaml"], 'facepipe: config wrong_type.yaml: Invalid scalar at path '
                                              'root:ops:pair__lora_adapter:config:epochs. Value "many"'),
])
def test_a_bad_preset_or_config_is_one_line_and_exit_2_before_anything_runs(project_env, capsys, args, expected):
    Path("typo.yaml").write_text("ops:\n  identity__identity_model: {config: {epoch: 3}}\n")
    Path("strange_op.yaml").write_text("ops:\n  xseg: {config: {epochs: 3}}\n")
    Path("wrong_type.yaml").write_text("ops:\n  pair__lora_adapter: {config: {epochs: many}}\n")
    assert cli.main(["--data-root", str(project_env), *args]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(expected) and err.count("\n") == 1 and out == ""
    assert not project_env.exists()  # `demo` did not write the sample, nothing was registered or built
    assert not Path("dagster_home", "storage").exists() and not Path("store").exists()


def test_presets_command_lists_and_prints_a_jobs_part_for_the_launchpad(project_env, capsys):
    assert cli.main(["presets"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["demo", "gpu", "quality"]
    assert cli.main(["presets", "quality"]) == 0
    assert capsys.readouterr().out.startswith("# quality:")
    assert cli.main(["presets", "gpu", "--group", "target"]) == 0
    pasted = yaml.safe_load(capsys.readouterr().out)
    assert pasted == {"ops": {"target__xseg_model": {"config": {"resolution": 256, "width": 32, "batch_size": 16}}}}
    assert validate_run_config(defs.resolve_job_def("target_job"), pasted)
    assert cli.main(["presets", "quality", "--group", "target"]) == 0
    assert "sets nothing for the target assets" in capsys.readouterr().out
    assert cli.main(["presets", "nope"]) == 2


@pytest.mark.slow
def test_build_with_a_config_file_logs_its_settings_and_applies_them(project_env, tmp_path):
    """`facepipe build --config` on a 10-frame identity, as a command (the code location reads its
    folders from the environment when it loads): the settings are printed before the run, the run
    is tagged with its source and the identity model is built with them (its store record). The
    command makes one run at a time, so with `cpu_threads: 0` its training takes every core."""
    from facepipe.sample import hopper_face, render_head_video

    folder = project_env / "identities" / "hopper"
    folder.mkdir(parents=True)
    render_head_video(hopper_face(160), folder / "hopper.mp4", n_frames=10, size=160)
    tiny = {**TINY_TRAINING["identity__identity_model"], "epochs": 2, "cpu_threads": 0}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"ops": {"identity__identity_model": {"config": tiny}}}))
    done = subprocess.run([sys.executable, "-m", "facepipe.cli", "build", "--role", "identity", "--partition", "hopper",
                           "--config", str(config)], capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    settings_line = f"config {config}: identity__identity_model " + ", ".join(f"{k}={v}" for k, v in sorted(tiny.items()))
    assert done.stdout.splitlines()[0] == settings_line
    record = ArtifactStore(tmp_path / "store").current_record("identity/identity_model", "hopper")
    assert {key: record["config"][key] for key in tiny} == tiny
    assert f"training ReconstructionTask on cpu (fp32, deterministic, {os.cpu_count()} threads)" in done.stderr
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        [run] = instance.get_runs()
        assert run.tags["facepipe/run_config"] == f"config {config}"
        assert run.tags[RUNS_ALONE_TAG] == "true"
        assert run.run_config["ops"]["identity__identity_model"]["config"] == tiny


def test_the_data_layout_is_committed_and_user_media_stay_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", path]).returncode == 0

    assert (REPO / "data" / "README.md").is_file()
    for kept in ("data/README.md", "data/identities/.gitkeep", "data/targets/.gitkeep"):
        assert not ignored(kept), kept
    for private in ("data/identities/jane/jane.mp4", "data/targets/interview/clip.mp4",
                    "data/targets/interview/masks/clip_000012.png", "data/pairs.toml",
                    "data/sample_truth/astronaut/occluders.npz", "data/identities/jane/notes.txt"):
        assert ignored(private), private


def test_an_interrupted_run_is_told_apart_from_a_failed_one():
    """Ctrl+C during one run stops `facepipe build` (no further jobs); a failure does not."""
    from dagster import job, op
    from dagster._core.errors import DagsterExecutionInterruptedError

    @op
    def interrupted():
        raise DagsterExecutionInterruptedError()

    @op
    def failing():
        raise ValueError("bad input")

    @job
    def interrupted_job():
        interrupted()

    @job
    def failing_job():
        failing()

    assert cli.was_interrupted(interrupted_job.execute_in_process(raise_on_error=False))
    assert not cli.was_interrupted(failing_job.execute_in_process(raise_on_error=False))


def test_trainings_take_every_core_only_when_they_run_alone():
    from facepipe.train.device import default_cpu_threads

    cores = os.cpu_count()
    assert default_cpu_threads(alone=True) == cores
    assert default_cpu_threads() == max(1, cores // 2)
