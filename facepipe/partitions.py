"""Partitions: one dynamic partition per folder under data/identities and data/targets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dagster import DynamicPartitionsDefinition, MultiPartitionsDefinition

ROLES = ("identity", "target")
ROLE_FOLDERS = {"identity": "identities", "target": "targets"}

# Keys become folder names in the store and parts of "identity|target" pair keys, so they must
# never contain "|", ",", "/" or "..": a strict whitelist is the only safe choice.
KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
MAX_KEY_LENGTH = 64

identity_partitions = DynamicPartitionsDefinition(name="identity")
target_partitions = DynamicPartitionsDefinition(name="target")
PARTITIONS = {"identity": identity_partitions, "target": target_partitions}
# Dimensions sort by name, so pair keys read "<identity>|<target>".
pair_partitions = MultiPartitionsDefinition({"identity": identity_partitions, "target": target_partitions})


class InvalidPartitionKey(ValueError):
    pass


def validate_key(key: str) -> str:
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not KEY_PATTERN.fullmatch(key):
        raise InvalidPartitionKey(
            f"invalid partition key {key!r}: use lowercase letters, digits, '_' and '-', "
            f"starting with a letter or digit, at most {MAX_KEY_LENGTH} characters "
            f"(rename the folder, e.g. 'Jane Doe' -> 'jane_doe')"
        )
    return key


@dataclass(frozen=True)
class Discovery:
    keys: list[str]
    rejected: list[tuple[str, str]]  # (folder name, reason)


def role_dir(data_root: Path, role: str) -> Path:
    if role not in ROLE_FOLDERS:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    return Path(data_root) / ROLE_FOLDERS[role]


def discover(data_root: Path, role: str) -> Discovery:
    """Valid partition keys of one role (sorted), and the folders skipped with the reason."""
    folder = role_dir(data_root, role)
    keys, rejected = [], []
    if not folder.is_dir():
        return Discovery([], [])
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or entry.is_symlink():
            rejected.append((entry.name, "not a folder (each identity/target is a folder of media files)"))
            continue
        try:
            keys.append(validate_key(entry.name))
        except InvalidPartitionKey as error:
            rejected.append((entry.name, str(error)))
    return Discovery(keys, rejected)


def media_dir(data_root: Path, role: str, key: str) -> Path:
    return role_dir(data_root, role) / validate_key(key)
