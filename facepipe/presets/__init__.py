"""Run configs: the named presets shipped here (`<name>.yaml`) and any YAML/JSON file a user writes.

A run config is Dagster's own shape, `{ops: {<group>__<asset>: {config: {<field>: <value>}}}}`,
so a preset can be pasted into the Dagster UI's launchpad as it is (one job's ops at a time: see
`for_job`). `facepipe build --preset NAME` / `--config FILE` and the nightly schedules
(FACEPIPE_NIGHTLY_CONFIG, a file or a preset name) read them here and check them with
`facepipe.presets.check.job_configs` before anything runs: each job accepts only the ops of its own group, so the config
is split per job the way runs are sent (`for_job`) and every part is validated with
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


def for_job(run_config: dict[str, Any], group: str) -> dict[str, Any]:
    """The part of a run config one group's job accepts (Dagster rejects other groups' ops): what
    the CLI and the nightly send with each run, and what a user pastes into that job's launchpad."""
    ops = {name: value for name, value in (run_config.get("ops") or {}).items() if name.startswith(f"{group}__")}
    return {"ops": ops} if ops else {}


def settings_lines(run_config: RunConfig) -> list[str]:
    """The op configs a run config applies, one line per op, for the run log."""
    if not run_config.ops:
        return [f"{run_config.source}: no op config (every asset's defaults)"]
    return [f"{run_config.source}: {op} " + ", ".join(f"{key}={value}" for key, value in
                                                       sorted(((value or {}).get("config") or {}).items()))
            for op, value in sorted(run_config.ops.items())]
