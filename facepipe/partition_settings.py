"""Settings of one partition: `settings.toml` in an identity's or a target's folder, and the
tables of a pair's entry in `data/pairs.toml`.

Run config (a preset, `--config`, the nightly's file) applies to every partition a run builds.
Some settings belong to one person or one pair: head turns for an identity whose videos never
turn far, feature matching for an identity whose footage is soft, another seed for one adapter
(docs/swap_quality.md). Written beside the partition's media, they hold for every build of that
partition (`facepipe build`, the UI, the nightly) and override the run config there only:

    # data/identities/jane/settings.toml
    [identity_model]
    turn = 0.5

    # data/pairs.toml
    [[pair]]
    identity = "jane"
    target = "interview"
    lora_adapter = { turn = 0.5 }

A table names an asset of the partition's role (PARTITION_ASSETS); its keys are that asset's
config fields. They become the asset's config, so they are in its fingerprint and its record,
and editing them rebuilds that asset and what depends on it, nothing before.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pydantic
from dagster import Config

from facepipe.pairs import PAIR_SETTING_TABLES, PAIRS_FILE, pair_tables
from facepipe.partitions import media_dir

SETTINGS_FILE = "settings.toml"  # in data/<identities|targets>/<key>/; media scanning skips it
# The assets whose settings a partition may set, per group: the per-person and per-pair levers.
PARTITION_ASSETS = {"identity": ("identity_model",), "target": ("xseg_model",), "pair": PAIR_SETTING_TABLES}


class PartitionSettingsError(ValueError):
    """The partition's settings cannot be used; the message names the file and what to write."""


def how_to(group: str) -> str:
    tables = " or ".join(f"[{name}]" for name in PARTITION_ASSETS[group])
    return f"write tables {tables} whose keys are that asset's config fields (README, 'Settings of one partition')"


def role_settings(data_root: Path, role: str, key: str) -> tuple[Path, dict[str, dict[str, Any]]]:
    """(the file, {asset: settings}) of an identity's or target's settings.toml; {} without one."""
    path = media_dir(data_root, role, key) / SETTINGS_FILE
    if not path.is_file():
        return path, {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise PartitionSettingsError(f"{path}: not valid TOML ({error}); {how_to(role)}") from error
    unknown = sorted(name for name, value in document.items() if name not in PARTITION_ASSETS[role] or not isinstance(value, dict))
    if unknown:
        raise PartitionSettingsError(f"{path}: {', '.join(unknown)} is not a table of settings this file can hold; {how_to(role)}")
    return path, document


def asset_settings(data_root: Path, asset: str, partition: str) -> tuple[Path, dict[str, Any]]:
    """(where they are written, {field: value}) that `asset` ("identity/identity_model") takes for
    `partition` ("jane", or "jane|interview" for a pair); {} for an asset no partition can set."""
    group, name = asset.split("/")
    if name not in PARTITION_ASSETS.get(group, ()):
        return Path(data_root) / SETTINGS_FILE, {}
    if group == "pair":
        identity, target = partition.split("|")
        return Path(data_root) / PAIRS_FILE, pair_tables(data_root, identity, target).get(name, {})
    path, tables = role_settings(data_root, group, partition)
    return path, tables.get(name, {})


def with_settings(config: Config, values: dict[str, Any], where: str) -> Config:
    """`config` with `values` in place of its own, checked as Dagster checks run config; an unknown
    field or a value of the wrong type is a PartitionSettingsError naming `where`."""
    fields = type(config).model_fields
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PartitionSettingsError(f"{where}: no field {', '.join(map(repr, unknown))} "
                                     f"(its fields: {', '.join(sorted(fields))})")
    try:
        return type(config)(**{**config.model_dump(), **values})
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))} = {e['input']!r}: {e['msg']}" for e in error.errors())
        raise PartitionSettingsError(f"{where}: {problems}") from error


def partition_config(context, settings, config: Config) -> Config:
    """The config an asset builds this partition with: the run's, overridden by the partition's
    own settings (logged when there are any)."""
    asset, partition = context.asset_key.to_user_string(), str(context.partition_key)
    path, values = asset_settings(settings.data_path, asset, partition)
    if not values:
        return config
    effective = with_settings(config, values, f"{path} [{context.asset_key.path[-1]}]")
    context.log.info(f"{asset} [{partition}]: {path.name} sets "
                     + ", ".join(f"{field}={value!r}" for field, value in sorted(values.items())) + " (over the run config)")
    return effective
