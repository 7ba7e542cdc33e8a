"""Run-config presets: shipped as package data, checked against the jobs, equal to the defaults
(demo) or different fingerprints (quality, gpu), and usable by the nightly by name."""

from __future__ import annotations

import json

import pytest
import yaml
from dagster import validate_run_config
from dagster._core.system_config.objects import ResolvedRunConfig

from facepipe import presets
from facepipe.automation.nightly import NIGHTLY_CONFIG_ENV, NightlyConfigError, load_nightly_run_config
from facepipe.definitions import defs
from facepipe.presets import RunConfig, RunConfigError
from facepipe.automation.discovery import JOB_OF_GROUP
from facepipe.presets.check import job_configs
from facepipe.store import fingerprint

TRAINING_OPS = ("identity__identity_model", "target__xseg_model", "pair__lora_adapter")


def resolved_op_configs(run_config: dict) -> dict[str, dict]:
    """op -> the config its asset receives (Dagster fills in every default), over every job: what
    the asset's Config class is built from and so what goes into its fingerprint."""
    configs = {}
    for group, job_name in JOB_OF_GROUP.items():
        resolved = ResolvedRunConfig.build(defs.resolve_job_def(job_name), presets.for_job(run_config, group))
        configs.update({op: value.config for op, value in resolved.ops.items()})
    return configs


def test_presets_ship_inside_the_package_and_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"demo", "quality", "gpu"} <= set(presets.preset_names())
    assert presets.load("quality").preset == "quality"  # a bare name is a preset when no such file exists


def test_every_shipped_preset_passes_dagsters_validation_for_each_job():
    for name in presets.preset_names():
        parts = job_configs(presets.load_preset(name))
        for job_name, part in parts.items():
            assert validate_run_config(defs.resolve_job_def(job_name), part)


def test_demo_is_exactly_the_defaults():
    """The demo preset spells the defaults out (a template to copy, a visible record in the run
    log); every asset receives the same config with it as without it, so it builds the same
    fingerprints and reuses a default build."""
    demo = presets.load_preset("demo")
    assert set(demo.ops) == set(TRAINING_OPS)
    assert resolved_op_configs(demo.config) == resolved_op_configs({})


def test_quality_and_gpu_change_fingerprints_where_they_change_settings():
    defaults = resolved_op_configs({})
    inputs = {"faces": "0" * 64}
    for name, changed in (("quality", {"identity__identity_model", "pair__lora_adapter"}), ("gpu", set(TRAINING_OPS))):
        configs = resolved_op_configs(presets.load_preset(name).config)
        differs = {op for op in defaults if fingerprint("1", configs[op], inputs) != fingerprint("1", defaults[op], inputs)}
        assert differs == changed, name
    quality = resolved_op_configs(presets.load_preset("quality").config)
    # quality trains the identity model longer and changes nothing else: same model, so the demo's
    # checkpoints are continued; the adapter trains as long as was measured within the hour
    assert quality["identity__identity_model"]["epochs"] == 400 > defaults["identity__identity_model"]["epochs"]
    assert quality["pair__lora_adapter"]["epochs"] == 107
    for op in ("identity__identity_model", "pair__lora_adapter"):
        assert {k: v for k, v in quality[op].items() if k != "epochs"} == {k: v for k, v in defaults[op].items() if k != "epochs"}
    gpu = resolved_op_configs(presets.load_preset("gpu").config)
    assert {k: gpu["identity__identity_model"][k] for k in ("resolution", "width", "latent_dim", "depth", "batch_size")} == {
        "resolution": 256, "width": 64, "latent_dim": 512, "depth": 5, "batch_size": 32}
    assert {k: gpu["target__xseg_model"][k] for k in ("resolution", "width", "batch_size")} == {
        "resolution": 256, "width": 32, "batch_size": 16}


@pytest.mark.parametrize("config, expected", [
    ({"ops": {"identity__identity_model": {"config": {"epoch": 3}}}}, "identity__identity_model: no field 'epoch'"),
    ({"ops": {"identity__identity_modle": {"config": {}}}}, "'identity__identity_modle': no such op in identity_job"),
    ({"ops": {"frames": {"config": {"max_frames": 5}}}}, "op 'frames' belongs to no job"),
    ({"ops": {"pair__lora_adapter": {"config": {"epochs": "many"}}}}, 'Value "many"'),
    ({"ops": {"target__xseg_model": {"epochs": 3}}}, "unexpected 'epochs' under ops:target__xseg_model"),
])
def test_a_bad_run_config_is_one_line_naming_the_problem(config, expected):
    with pytest.raises(RunConfigError) as raised:
        job_configs(RunConfig("config my.yaml", config))
    message = str(raised.value)
    assert message.startswith("config my.yaml: ") and expected in message and "\n" not in message


def test_bad_names_shapes_and_files_are_one_line(tmp_path):
    with pytest.raises(RunConfigError, match=r"^no preset 'qualty' \(presets: .*quality.*\)$"):
        presets.load_preset("qualty")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loggers: {}\n")
    with pytest.raises(RunConfigError, match="only an 'ops' section is used"):
        presets.load(bad)
    bad.write_text("ops: [\n")
    with pytest.raises(RunConfigError, match="not YAML or JSON") as raised:
        presets.load(bad)
    assert "\n" not in str(raised.value)
    with pytest.raises(RunConfigError, match="cannot read it"):
        presets.load(tmp_path / "missing.yaml")


def test_a_json_file_and_a_yaml_file_are_read_alike(tmp_path):
    config = {"ops": {"identity__identity_model": {"config": {"epochs": 80}}}}
    (tmp_path / "a.json").write_text(json.dumps(config))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    assert presets.load(tmp_path / "a.json").config == presets.load(tmp_path / "b.yaml").config == config
    assert presets.settings_lines(presets.load(tmp_path / "a.json")) == [
        f"config {tmp_path / 'a.json'}: identity__identity_model epochs=80"]


def test_the_nightly_takes_a_preset_name_or_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv(NIGHTLY_CONFIG_ENV, "quality")
    assert load_nightly_run_config() == presets.load_preset("quality").config
    file = tmp_path / "nightly.yaml"
    file.write_text("ops:\n  pair__lora_adapter: {config: {epochs: 60}}\n")
    monkeypatch.setenv(NIGHTLY_CONFIG_ENV, str(file))
    assert load_nightly_run_config() == {"ops": {"pair__lora_adapter": {"config": {"epochs": 60}}}}
    monkeypatch.setenv(NIGHTLY_CONFIG_ENV, "qualty")
    with pytest.raises(NightlyConfigError, match=f"{NIGHTLY_CONFIG_ENV}.*no preset 'qualty'"):
        load_nightly_run_config()
    file.write_text("ops:\n  pair__lora_adaptor: {config: {epochs: 60}}\n")
    monkeypatch.setenv(NIGHTLY_CONFIG_ENV, str(file))
    with pytest.raises(NightlyConfigError, match="no such op in pair_job"):
        load_nightly_run_config()


def test_one_jobs_part_of_a_preset_is_what_the_launchpad_accepts():
    """The launchpad of a job (or of one group's assets) rejects other groups' ops, so the README
    has users paste `facepipe presets NAME --group G`: exactly `for_job`."""
    gpu = presets.load_preset("gpu").config
    for group, job_name in JOB_OF_GROUP.items():
        part = presets.for_job(gpu, group)
        assert part and set(part["ops"]) == {op for op in gpu["ops"] if op.startswith(f"{group}__")}
        assert validate_run_config(defs.resolve_job_def(job_name), part)
