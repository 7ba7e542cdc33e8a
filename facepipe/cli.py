"""`facepipe`: the few things Dagster's own commands make awkward.

  facepipe sample     write the embedded sample media into data/
  facepipe register   register data/ folders as dynamic partitions (what the sensor does)
  facepipe build      register, then materialize every partition of each role
  facepipe demo       sample + build: the README's first command
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

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


def build(data_root: Path, roles: list[str], partition: str | None) -> bool:
    from dagster import DagsterInstance

    from facepipe.automation.discovery import role_job_name
    from facepipe.definitions import defs

    keys = register(data_root)
    instance = DagsterInstance.get()
    ok = True
    for role in roles:
        targets = [partition] if partition else keys[role]
        if partition and partition not in keys[role]:
            print(f"no {role} folder '{partition}' under {data_root}", file=sys.stderr)
            return False
        for key in targets:
            started = time.perf_counter()
            result = defs.resolve_job_def(role_job_name(role)).execute_in_process(
                instance=instance, partition_key=key, raise_on_error=False, run_config=INFO_LOGS
            )
            status = "ok" if result.success else "FAILED"
            print(f"{role}/{key}: {status} in {time.perf_counter() - started:.1f}s (run {result.run_id})")
            ok &= result.success
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
    if args.command in ("sample", "demo"):
        from facepipe.sample import build_sample

        written = build_sample(data_root)
        print(f"sample media written under {data_root}: {written}")
    if args.command == "register":
        register(data_root)
    if args.command in ("build", "demo"):
        return 0 if build(data_root, args.role or ["identity", "target"], args.partition) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
