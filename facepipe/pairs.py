"""Declared pairs: which identity × target combinations to build (`data/pairs.toml`).

Pairs are declared, not derived: training every identity against every target would cost
|identities| × |targets| adapters nobody asked for.

    [[pair]]
    identity = "hopper"
    target = "astronaut"
    lora_adapter = { seed = 1 }   # optional: this pair's own settings (facepipe.partition_settings)
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from facepipe.partitions import InvalidPartitionKey, validate_key

PAIRS_FILE = "pairs.toml"
# Assets whose settings a pair's entry may set (facepipe.partition_settings): `lora_adapter = { seed = 1 }`.
PAIR_SETTING_TABLES = ("lora_adapter", "onnx_export")


class PairsFileError(ValueError):
    pass


PAIR_SHAPE = 'Each entry is [[pair]] with identity = "<key>" and target = "<key>".'


def declared_pairs(data_root: Path) -> list[tuple[str, str]]:
    """(identity, target) pairs in data/pairs.toml, sorted and de-duplicated; none if no file.
    Anything wrong with the file is one PairsFileError line naming it and the fix."""
    path = Path(data_root) / PAIRS_FILE
    if not path.is_file():
        return []
    return sorted({pair_entry(path, number, entry) for number, entry in enumerate(pair_entries(path), start=1)})


def pair_entries(path: Path) -> list[dict]:
    """The [[pair]] tables of the file, as parsed; a PairsFileError if it is not such a file."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise PairsFileError(f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at line {line}): "
                             "save it as UTF-8") from error
    try:
        entries = tomllib.loads(text).get("pair", [])
    except tomllib.TOMLDecodeError as error:
        raise PairsFileError(f"{path}: {error}. {PAIR_SHAPE}") from error
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise PairsFileError(f"{path}: 'pair' must be a list of [[pair]] tables. {PAIR_SHAPE}")
    return entries


def pair_entry(path: Path, number: int, entry: dict) -> tuple[str, str]:
    """One [[pair]] table as (identity, target), or a PairsFileError saying which entry lacks what."""
    for side, other in (("identity", "target"), ("target", "identity")):
        if side not in entry:
            named = f" ({other} = {entry[other]!r})".replace("'", '"') if other in entry else ""
            raise PairsFileError(f"{path}: pair {number}{named} has no {side}. {PAIR_SHAPE}")
    for name, value in entry.items():
        if name not in ("identity", "target") and (name not in PAIR_SETTING_TABLES or not isinstance(value, dict)):
            raise PairsFileError(f"{path}: pair {number}: {name} is not a table of settings a pair can set; write "
                                 f"{' or '.join(PAIR_SETTING_TABLES)} = {{ <field> = <value>, ... }}")
    keys = []
    for side in ("identity", "target"):
        if not isinstance(entry[side], str):
            raise PairsFileError(f"{path}: pair {number}: {side} = {entry[side]!r} is not a partition key in quotes. {PAIR_SHAPE}")
        try:
            keys.append(validate_key(entry[side]))
        except InvalidPartitionKey as error:
            raise PairsFileError(f"{path}: pair {number}: {error}") from error
    return keys[0], keys[1]


def pair_tables(data_root: Path, identity: str, target: str) -> dict[str, dict]:
    """{asset: settings} written in the pair's entry (PAIR_SETTING_TABLES). A pair declared twice
    may repeat its settings but not contradict them."""
    path = Path(data_root) / PAIRS_FILE
    tables: dict[str, dict] = {}
    for number, entry in enumerate(pair_entries(path) if path.is_file() else [], start=1):
        if pair_entry(path, number, entry) != (identity, target):
            continue
        for name in PAIR_SETTING_TABLES:
            if name in entry and tables.setdefault(name, entry[name]) != entry[name]:
                raise PairsFileError(f"{path}: pair {pair_key(identity, target)} is declared twice with different "
                                     f"{name} settings: keep one")
    return tables


def pair_key(identity: str, target: str) -> str:
    return f"{identity}|{target}"


def declare_pair(data_root: Path, identity: str, target: str) -> bool:
    """Add a pair to data/pairs.toml unless it is there; returns whether the file changed."""
    if (validate_key(identity), validate_key(target)) in declared_pairs(data_root):
        return False
    path = Path(data_root) / PAIRS_FILE
    existing = path.read_text() if path.is_file() else ""
    separator = "" if not existing or existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
    path.write_text(f'{existing}{separator}[[pair]]\nidentity = "{identity}"\ntarget = "{target}"\n')
    return True
