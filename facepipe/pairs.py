"""Declared pairs: which identity × target combinations to build (`data/pairs.toml`).

Pairs are declared, not derived: training every identity against every target would cost
|identities| × |targets| adapters nobody asked for.

    [[pair]]
    identity = "hopper"
    target = "astronaut"
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from facepipe.partitions import InvalidPartitionKey, validate_key

PAIRS_FILE = "pairs.toml"


class PairsFileError(ValueError):
    pass


PAIR_SHAPE = 'Each entry is [[pair]] with identity = "<key>" and target = "<key>".'


def declared_pairs(data_root: Path) -> list[tuple[str, str]]:
    """(identity, target) pairs in data/pairs.toml, sorted and de-duplicated; none if no file.
    Anything wrong with the file is one PairsFileError line naming it and the fix."""
    path = Path(data_root) / PAIRS_FILE
    if not path.is_file():
        return []
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
    return sorted({pair_entry(path, number, entry) for number, entry in enumerate(entries, start=1)})


def pair_entry(path: Path, number: int, entry: dict) -> tuple[str, str]:
    """One [[pair]] table as (identity, target), or a PairsFileError saying which entry lacks what."""
    for side, other in (("identity", "target"), ("target", "identity")):
        if side not in entry:
            named = f" ({other} = {entry[other]!r})".replace("'", '"') if other in entry else ""
            raise PairsFileError(f"{path}: pair {number}{named} has no {side}. {PAIR_SHAPE}")
    keys = []
    for side in ("identity", "target"):
        if not isinstance(entry[side], str):
            raise PairsFileError(f"{path}: pair {number}: {side} = {entry[side]!r} is not a partition key in quotes. {PAIR_SHAPE}")
        try:
            keys.append(validate_key(entry[side]))
        except InvalidPartitionKey as error:
            raise PairsFileError(f"{path}: pair {number}: {error}") from error
    return keys[0], keys[1]


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
