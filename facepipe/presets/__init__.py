"""Run configs: the named presets shipped here (`<name>.yaml`) and any YAML/JSON file a user writes.

A run config is Dagster's own shape, `{ops: {<group>__<asset>: {config: {<field>: <value>}}}}`,
so a preset can be pasted into the Dagster UI's launchpad as it is (one job's ops at a time: see
`for_job`). `facepipe build --preset NAME` / `--config FILE` and the nightly schedules
(FACEPIPE_NIGHTLY_CONFIG, a file or a preset name) read them here and check them with
`job_configs` before anything runs: each job accepts only the ops of its own group, so the config
is split per job the way the nightly sends it (`job_run_config`) and every part is validated with
Dagster's config validation against that job. A problem is one line (RunConfigError).

A preset's values are config like any other: they go into the store's fingerprints, so a preset
that changes a setting builds (and caches) its own outputs, and one that repeats the defaults
(`demo`) reuses the default build's.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PRESET_SUFFIX = ".yaml"


class RunConfigError(ValueError):
    """A run config that cannot be used; the message is one line naming where it came from."""


@dataclass(frozen=True)
class RunConfig:
    source: str  # "preset quality" or "config my.yaml", for messages and the run log
    config: dict[str, Any]  # {"ops": {...}} or {} (every asset's defaults)
    preset: str | None = None

    @property
    def ops(self) -> dict[str, Any]:
        return self.config.get("ops") or {}


def preset_names() -> list[str]:
    return sorted(entry.name[: -len(PRESET_SUFFIX)] for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(PRESET_SUFFIX))


def preset_text(name: str) -> str:
    """The preset file as shipped (comments included)."""
    if name not in preset_names():
        raise RunConfigError(f"no preset '{name}' (presets: {', '.join(preset_names())})")
    return resources.files(__name__).joinpath(name + PRESET_SUFFIX).read_text()


def load_preset(name: str) -> RunConfig:
    return RunConfig(f"preset {name}", parse(preset_text(name), f"preset {name}"), preset=name)


def load_file(path: str | Path) -> RunConfig:
    source = f"config {path}"
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise RunConfigError(f"{source}: cannot read it ({error.strerror or error})") from error
    return RunConfig(source, parse(text, source))


def load(source: str | Path) -> RunConfig:
    """A file path, or the name of a preset when no such file exists and the name has no
    folder or suffix (`quality`, not `./quality` or `quality.yaml`)."""
    path = Path(source)
    if path.exists() or path.name != str(source) or path.suffix:
        return load_file(path)
    return load_preset(str(source))


def parse(text: str, source: str) -> dict[str, Any]:
    """YAML or JSON text -> {"ops": {...}} (or {}); only the `ops` section is used."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RunConfigError(f"{source}: not YAML or JSON ({' '.join(str(error).split())})") from error
    loaded = loaded or {}
    if not isinstance(loaded, dict) or set(loaded) - {"ops"} or not isinstance(loaded.get("ops") or {}, dict):
        raise RunConfigError(f"{source}: must look like {{ops: {{identity__identity_model: {{config: {{epochs: 80}}}}}}}} "
                             "(only an 'ops' section is used)")
    return {"ops": loaded["ops"]} if loaded.get("ops") else {}


def job_groups() -> dict[str, str]:
    """group -> the job that builds it (the CLI's and the schedules' jobs)."""
    from facepipe.automation.discovery import PAIR_JOB, role_job_name
    from facepipe.partitions import ROLES

    return {**{role: role_job_name(role) for role in ROLES}, "pair": PAIR_JOB}


def for_job(run_config: dict[str, Any], group: str) -> dict[str, Any]:
    """The part of a run config one group's job accepts (the nightly's own split)."""
    from facepipe.automation.nightly import job_run_config

    return job_run_config(run_config, group)


def job_configs(run_config: RunConfig) -> dict[str, dict[str, Any]]:
    """Job name -> its part of the run config, each part checked with Dagster's own validation
    against the job; an op that belongs to no job, an unknown op or field, or a value of the wrong
    type raises RunConfigError (one line)."""
    from dagster import validate_run_config
    from dagster._core.errors import DagsterInvalidConfigError

    from facepipe.definitions import defs

    groups = job_groups()
    parts = {job: for_job(run_config.config, group) for group, job in groups.items()}
    claimed = {op for part in parts.values() for op in part.get("ops", {})}
    if strays := sorted(set(run_config.ops) - claimed):
        raise RunConfigError(f"{run_config.source}: op '{strays[0]}' belongs to no job (op names are "
                             f"<group>__<asset>, group one of {', '.join(groups)}: e.g. identity__identity_model)")
    for job_name, part in parts.items():
        if not part:
            continue
        job = defs.resolve_job_def(job_name)
        try:
            validate_run_config(job, part)
        except DagsterInvalidConfigError as error:
            problems = "; ".join(describe_config_error(job, job_name, each) for each in error.errors)
            raise RunConfigError(f"{run_config.source}: {problems}") from None
    return parts


def describe_config_error(job, job_name: str, error) -> str:
    """Dagster's message for one config error, without the whole expected schema it appends,
    and with the names that are accepted where a name was unknown."""
    path = [entry.field_name for entry in error.stack.entries if hasattr(entry, "field_name")]
    data = error.error_data
    unknown = getattr(data, "field_names", None) or ([data.field_name] if hasattr(data, "field_name") else None)
    if unknown and error.reason.value in ("FIELD_NOT_DEFINED", "FIELDS_NOT_DEFINED"):
        names = ", ".join(f"'{name}'" for name in unknown)
        accepted = ", ".join(accepted_names(job, path)) or "none"
        if path == ["ops"]:
            return f"{names}: no such op in {job_name} (its ops: {accepted})"
        if len(path) == 3 and path[2] == "config":
            return f"{path[1]}: no field {names} (its fields: {accepted})"
        return f"unexpected {names} under {':'.join(path)} (expected: {accepted})"
    return " ".join(error.message.split(" Expected:")[0].split()).rstrip(".")


def accepted_names(job, path: list[str]) -> list[str]:
    config_type = job.run_config_schema.config_type
    for name in path:
        fields = getattr(config_type, "fields", None)
        if not fields or name not in fields:
            return []
        config_type = fields[name].config_type
    return sorted(getattr(config_type, "fields", None) or {})


def settings_lines(run_config: RunConfig) -> list[str]:
    """The op configs a run config applies, one line per op, for the run log."""
    if not run_config.ops:
        return [f"{run_config.source}: no op config (every asset's defaults)"]
    return [f"{run_config.source}: {op} " + ", ".join(f"{key}={value}" for key, value in
                                                       sorted(((value or {}).get("config") or {}).items()))
            for op, value in sorted(run_config.ops.items())]
