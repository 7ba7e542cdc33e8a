"""Build the whole facepipe graph twice from empty stores and compare every published artifact.

    python scripts/rebuild_check.py                       # the embedded sample (minutes on CPU)
    python scripts/rebuild_check.py --data-root data      # your own media folder (read only)
    python scripts/rebuild_check.py --run-config tiny.json --work /tmp/rebuild --keep

Both builds read the same data folder and write to their own fresh store and models folders,
each with a new ephemeral Dagster instance, on the CPU: every identity and target partition
(role jobs), then every pair declared in data/pairs.toml (pair job) — what `facepipe build`
does. Then the sha256 of every published artifact is compared:
  - everything under models/ (profiles, trained models, index.json),
  - each asset's current output in the store: `<store>/<asset>/<partition>/current.json`
    (which names the fingerprint and content hash) and every file of the folder it points to,
    except `_artifact.json`, the store's own record: it holds library versions and the build's
    telemetry (durations, seconds per epoch), which differ from run to run by design.
Training checkpoints and TensorBoard files under `<store>/_runs/` are working state, not
artifacts: they are not compared.

Exit status 0 when both builds succeeded and every artifact is byte-identical; 1 otherwise,
listing the files that differ or exist in only one build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

STORE_RECORD = "_artifact.json"  # facepipe.store.RECORD; not imported so --help stays instant
CURRENT = "current.json"  # facepipe.store.CURRENT
# Dagster logs only warnings and errors; the script prints one line per job itself.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def is_internal(relative: Path) -> bool:
    """Working state rather than artifacts: `_runs/` (checkpoints) and `.tmp-*` leftovers."""
    return any(part.startswith(("_", ".")) for part in relative.parts)


def models_hashes(models_root: Path) -> dict[str, str]:
    """sha256 of every file under models/, keyed `models/<relative path>`."""
    hashes = {}
    if models_root.is_dir():
        for path in sorted(p for p in models_root.rglob("*") if p.is_file()):
            relative = path.relative_to(models_root)
            if not is_internal(relative):
                hashes[f"models/{relative.as_posix()}"] = file_sha256(path)
    return hashes


def store_hashes(store_root: Path) -> dict[str, str]:
    """sha256 of each asset's current output, keyed `store/<asset>/<partition>/<file>`.

    The fingerprint folder's name is left out of the key on purpose: `current.json` (hashed
    too) carries it, so a fingerprint that differs shows as one differing file instead of
    every file of the output appearing "only in one build".
    """
    hashes = {}
    for pointer in sorted(store_root.rglob(CURRENT)) if store_root.is_dir() else []:
        partition_dir = pointer.parent
        relative = partition_dir.relative_to(store_root)
        if is_internal(relative):
            continue
        hashes[f"store/{relative.as_posix()}/{CURRENT}"] = file_sha256(pointer)
        output = partition_dir / json.loads(pointer.read_text())["fingerprint"]
        for path in sorted(p for p in output.rglob("*") if p.is_file()):
            name = path.relative_to(output)
            if name.as_posix() != STORE_RECORD:
                hashes[f"store/{relative.as_posix()}/{name.as_posix()}"] = file_sha256(path)
    return hashes


def artifact_hashes(store_root: Path, models_root: Path) -> dict[str, str]:
    return {**models_hashes(Path(models_root)), **store_hashes(Path(store_root))}


def differences(first: dict[str, str], second: dict[str, str]) -> list[str]:
    """One line per artifact whose bytes differ or that only one build has, sorted by path."""
    lines = []
    for name in sorted(set(first) | set(second)):
        if name not in second:
            lines.append(f"only in build 1: {name}")
        elif name not in first:
            lines.append(f"only in build 2: {name}")
        elif first[name] != second[name]:
            lines.append(f"differs: {name}  {first[name][:16]} != {second[name][:16]}")
    return lines


def load_run_config(value: str | None) -> dict:
    """Run config from a JSON string or a JSON file; `{"ops": {...}}` as for `dagster ... --config-json`."""
    if not value:
        return {}
    # JSON text starts with "{"; anything else is a file (a long JSON string is no valid path).
    if value.lstrip().startswith("{"):
        text = value
    elif Path(value).is_file():
        text = Path(value).read_text()
    else:
        raise SystemExit(f"--run-config {value!r}: no such file (pass a JSON file or JSON text starting with '{{')")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--run-config {value!r}: not a JSON file or JSON text ({error})") from error
    if not isinstance(config, dict) or set(config) - {"ops", "resources"}:
        raise SystemExit('--run-config must be a JSON object with "ops" (and optionally "resources")')
    return config


def job_run_config(job_def, run_config: dict, settings: dict) -> dict:
    """The run config for one job: only the ops it has (Dagster rejects config for others),
    this build's paths for the settings resource, and quiet logs."""
    ops = set(job_def.graph.node_dict)
    user_settings = run_config.get("resources", {}).get("settings", {}).get("config", {})
    return {
        "ops": {name: config for name, config in run_config.get("ops", {}).items() if name in ops},
        "resources": {"settings": {"config": {**user_settings, **settings}}},
        **QUIET_LOGS,
    }


def run_job(job_name: str, partition_key: str, instance, run_config: dict, settings: dict, label: str) -> bool:
    from facepipe.definitions import defs

    job_def = defs.resolve_job_def(job_name)
    started = time.perf_counter()
    result = job_def.execute_in_process(
        instance=instance, partition_key=partition_key, raise_on_error=False,
        run_config=job_run_config(job_def, run_config, settings),
    )
    print(f"  {label}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - started:.1f}s", flush=True)
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            print(f"    {event.step_key}: {event.event_specific_data.error.message.strip()}", file=sys.stderr)
    return result.success


def build_once(data_root: Path, store_root: Path, models_root: Path, run_config: dict) -> bool:
    """Every role partition, then every declared pair, into empty stores; like `facepipe build`."""
    from dagster import DagsterInstance

    from facepipe.plan import plan_build
    from facepipe.partitions import PARTITIONS, ROLES, discover

    # The guarantee is for the CPU; a user's "device" in the run config is overridden on purpose.
    settings = {"data_root": str(data_root), "store_root": str(store_root), "models_root": str(models_root), "device": "cpu"}
    ok = True
    plan = plan_build(data_root, list(ROLES), None)  # the runs `facepipe build` makes, pairs.toml checked first
    with DagsterInstance.ephemeral() as instance:
        for role in ROLES:
            if keys := discover(data_root, role).keys:
                instance.add_dynamic_partitions(PARTITIONS[role].name, keys)
        for run in plan:
            ok &= run_job(run.job, run.key, instance, run_config, settings, run.label)
    return ok


def write_sample(data_root: Path) -> None:
    from facepipe.pairs import declare_pair
    from facepipe.sample import IDENTITY_KEY, TARGET_KEY, build_sample

    build_sample(data_root)
    declare_pair(data_root, IDENTITY_KEY, TARGET_KEY)


def chosen_data_root(data_root: Path | None, work: Path) -> Path:
    """`--data-root` as given (it must exist), or the embedded sample written into `work`/data."""
    if data_root is None:
        data_root = work / "data"
        write_sample(data_root)
    if not data_root.is_dir():
        raise SystemExit(f"--data-root {data_root}: no such folder")
    return data_root.resolve()


def check(data_root: Path, work: Path, run_config: dict) -> int:
    builds = []
    for number in (1, 2):
        store_root, models_root = work / f"build{number}" / "store", work / f"build{number}" / "models"
        for folder in (store_root, models_root):
            if folder.exists() and any(folder.iterdir()):
                raise SystemExit(f"{folder} is not empty: a rebuild check needs empty stores (choose another --work)")
        print(f"build {number}: store {store_root}, models {models_root}", flush=True)
        started = time.perf_counter()
        if not build_once(data_root, store_root, models_root, run_config):
            print(f"build {number} FAILED (see the step errors above); nothing compared", file=sys.stderr)
            return 1
        print(f"build {number}: done in {time.perf_counter() - started:.1f}s", flush=True)
        builds.append(artifact_hashes(store_root, models_root))

    first, second = builds
    if not first:
        print("no artifacts were published: is the data folder empty?", file=sys.stderr)
        return 1
    for name, digest in sorted(first.items()):
        print(f"{digest}  {name}")
    different = differences(first, second)
    if different:
        print(f"NOT bit-identical: {len(different)} of {len(set(first) | set(second))} artifacts differ:", file=sys.stderr)
        for line in different:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"bit-identical: {len(first)} artifacts, same sha256 in both builds")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, help="media folder (identities/, targets/, pairs.toml); "
                        "default: the embedded sample, written into the work folder")
    parser.add_argument("--run-config", help='JSON text or file: {"ops": {"identity__identity_model": {"config": {...}}}}')
    parser.add_argument("--work", type=Path, help="folder for the two builds (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (removed by default)")
    args = parser.parse_args(argv)

    from facepipe.plan import BuildInputError
    from facepipe.pairs import PairsFileError

    run_config = load_run_config(args.run_config)
    work = args.work or Path(tempfile.mkdtemp(prefix="facepipe-rebuild-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return check(chosen_data_root(args.data_root, work), work.resolve(), run_config)
    except (PairsFileError, BuildInputError) as error:  # pairs.toml or a pair's folder: one line
        raise SystemExit(f"rebuild_check: {error}") from error
    finally:
        if args.keep:
            print(f"builds kept in {work}")
        elif args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
