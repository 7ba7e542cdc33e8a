"""`facepipe`: the few things Dagster's own commands make awkward.

  facepipe sample     write the embedded sample media into data/
  facepipe register   register data/ folders as dynamic partitions (what the sensor does)
  facepipe build      register, then materialize every partition of each role and every
                      pair declared in data/pairs.toml
  facepipe demo       sample + build: the README's first command
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from facepipe.pairs import PairsFileError
from facepipe.resources import default_data_root, project_root


def use_project_instance() -> Path:
    """Point Dagster at the project's instance unless the user chose another DAGSTER_HOME."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(project_root() / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    return home


def register(data_root: Path) -> dict[str, list[str]]:
    from dagster import DagsterInstance

    from facepipe.partitions import PARTITIONS, ROLES, discover

    instance = DagsterInstance.get()
    registered = {}
    for role in ROLES:
        found = discover(data_root, role)
        for folder, reason in found.rejected:
            print(f"skipping {role} folder '{folder}': {reason}", file=sys.stderr)
        known = set(instance.get_dynamic_partitions(PARTITIONS[role].name))
        new = [k for k in found.keys if k not in known]
        if new:
            instance.add_dynamic_partitions(PARTITIONS[role].name, new)
        print(f"{role}: {', '.join(found.keys) or '(none)'}" + (f"  (new: {', '.join(new)})" if new else ""))
        registered[role] = found.keys
    return registered


# Progress and cache hits at INFO; Dagster's per-step DEBUG events stay in the UI's run log.
INFO_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def run_job(job_name: str, key: str, label: str) -> bool:
    from dagster import DagsterInstance

    from facepipe.definitions import defs

    started = time.perf_counter()
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=DagsterInstance.get(), partition_key=key, raise_on_error=False, run_config=INFO_LOGS
    )
    print(f"{label}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - started:.1f}s (run {result.run_id})")
    return result.success


def build(data_root: Path, roles: list[str], partition: str | None, pairs: bool = True) -> bool:
    from facepipe.automation.discovery import PAIR_JOB, role_job_name
    from facepipe.pairs import declared_pairs, pair_key

    keys = register(data_root)
    ok = True
    for role in roles:
        if partition and partition not in keys[role]:
            print(f"no {role} folder '{partition}' under {data_root}", file=sys.stderr)
            return False
        for key in [partition] if partition else keys[role]:
            ok &= run_job(role_job_name(role), key, f"{role}/{key}")
    if not pairs:
        return ok
    for identity, target in declared_pairs(data_root):
        if identity not in keys["identity"] or target not in keys["target"]:
            print(f"pair {identity}|{target} in pairs.toml: no such identity or target folder; skipped", file=sys.stderr)
            ok = False
        elif partition in (None, identity, target):
            ok &= run_job(PAIR_JOB, pair_key(identity, target), f"pair/{identity}|{target}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facepipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=None, help="media folder (default: FACEPIPE_DATA or ./data)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sample", help="write the embedded sample media")
    commands.add_parser("register", help="register data/ folders as partitions")
    for name in ("build", "demo"):
        sub = commands.add_parser(name, help="materialize every partition" if name == "build" else "sample + build")
        sub.add_argument("--role", choices=["identity", "target"], action="append", help="only this role (repeatable)")
        sub.add_argument("--partition", help="only this partition key")
    args = parser.parse_args(argv)

    data_root = args.data_root or Path(default_data_root())
    os.environ["FACEPIPE_DATA"] = str(data_root)  # the resource's default, for in-process runs
    use_project_instance()
    try:
        return run_command(args, data_root)
    except PairsFileError as error:  # the other bad inputs fail inside Dagster runs, named there
        print(f"facepipe: {error}", file=sys.stderr)
        return 2


def run_command(args: argparse.Namespace, data_root: Path) -> int:
    if args.command in ("sample", "demo"):
        from facepipe.pairs import declare_pair
        from facepipe.sample import IDENTITY_KEY, TARGET_KEY, build_sample

        written = build_sample(data_root)
        declare_pair(data_root, IDENTITY_KEY, TARGET_KEY)
        print(f"sample media written under {data_root} (changed: {written['changed'] or 'nothing'}); "
              f"pair {IDENTITY_KEY}|{TARGET_KEY} declared in {data_root / 'pairs.toml'}")
    if args.command == "register":
        register(data_root)
    if args.command in ("build", "demo"):
        return 0 if build(data_root, args.role or ["identity", "target"], args.partition, pairs=not args.role) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
