"""What `facepipe build` will run, checked before anything runs: the partition folders it names,
pairs.toml, the folders of the pairs it declares and the tables of their settings.toml. Also what
scripts/ build the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facepipe.pairs import PAIRS_FILE, declared_pairs, pair_key
from facepipe.partition_settings import role_settings
from facepipe.partitions import ROLES, discover, role_dir, validate_key


class BuildInputError(ValueError):
    """A partition or pair the build was asked for that has no folder: one line, before any run."""


@dataclass(frozen=True)
class PlannedRun:
    job: str
    key: str
    label: str


def plan_build(data_root: Path, roles: list[str], partition: str | None, pairs: bool = True) -> list[PlannedRun]:
    """The runs a build makes, in order, after checking everything they need that can be checked
    without running them: the partition folders and, when pairs are built, pairs.toml and the
    folders of the pairs it declares, and the partitions' settings.toml tables. A problem raises
    BuildInputError, PairsFileError or PartitionSettingsError.

    With `partition`, the roles that have that key are built, then for each declared pair with
    that key the other side (a cache hit when it was built before) and the pair."""
    from facepipe.automation.discovery import PAIR_JOB, role_job_name  # (media, OpenCV: only when building)

    keys = {role: discover(data_root, role).keys for role in ROLES}
    wanted: dict[str, list[str]] = {role: [] for role in ROLES}
    if partition is None:
        wanted = {role: list(keys[role]) if role in roles else [] for role in ROLES}
    else:
        validate_key(partition)
        have = [role for role in ROLES if partition in keys[role]]
        for role in roles:
            if partition in keys[role]:
                wanted[role].append(partition)
        if not any(wanted.values()):
            if have:
                raise BuildInputError(
                    f"no {' or '.join(roles)} folder '{partition}' under {data_root}: '{partition}' is "
                    f"{' and '.join(f'an {role}' if role == 'identity' else f'a {role}' for role in have)} "
                    f"({', '.join(str(role_dir(data_root, role) / partition) for role in have)}); "
                    f"use --role {have[0]} or leave --role out")
            listing = "; ".join(f"{role_dir(data_root, role).name}: {', '.join(keys[role]) or '(none)'}" for role in ROLES)
            raise BuildInputError(
                f"no identity or target folder '{partition}' under {data_root} ({listing}): create "
                f"{' or '.join(str(role_dir(data_root, role) / partition) for role in ROLES)}, or pick one of those")
    pair_runs = []
    for identity, target in declared_pairs(data_root) if pairs else []:
        if partition not in (None, identity, target):
            continue
        for role, key in (("identity", identity), ("target", target)):
            if key not in keys[role]:
                raise BuildInputError(f"{data_root / PAIRS_FILE}: pair {pair_key(identity, target)}: no {role} folder "
                                      f"{role_dir(data_root, role) / key}: create it or remove the pair")
            if key not in wanted[role]:
                wanted[role].append(key)  # what the pair is built from
        pair_runs.append(PlannedRun(PAIR_JOB, pair_key(identity, target), f"pair/{pair_key(identity, target)}"))
    for role in ROLES:  # each partition's settings.toml names tables its role has (fields are checked by the asset)
        for key in wanted[role]:
            role_settings(data_root, role, key)
    role_runs = [PlannedRun(role_job_name(role), key, f"{role}/{key}") for role in ROLES for key in sorted(wanted[role])]
    return role_runs + pair_runs
