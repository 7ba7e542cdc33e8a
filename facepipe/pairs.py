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


def declared_pairs(data_root: Path) -> list[tuple[str, str]]:
    """(identity, target) pairs in data/pairs.toml, sorted and de-duplicated; none if no file."""
    path = Path(data_root) / PAIRS_FILE
    if not path.is_file():
        return []
    try:
        entries = tomllib.loads(path.read_text()).get("pair", [])
        pairs = {(validate_key(e["identity"]), validate_key(e["target"])) for e in entries}
    except (tomllib.TOMLDecodeError, KeyError, TypeError, InvalidPartitionKey) as error:
        raise PairsFileError(f"{path}: {error}. Each entry is [[pair]] with identity = \"<key>\" and target = \"<key>\".") from error
    return sorted(pairs)


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
