"""`facepipe`: the few things Dagster's own commands make awkward.

  facepipe sample     write the embedded sample media into data/
  facepipe register   register data/ folders as dynamic partitions (what the sensor does)
  facepipe build      register, then materialize every partition of each role and every
                      pair declared in data/pairs.toml
  facepipe demo       sample + build: the README's first command
  facepipe presets    list the shipped run-config presets, or print one (for the launchpad)
  facepipe verify     check every output in the store against the sha256 in its record; damaged
                      ones are removed (the next build rebuilds them); exit 1 if any was damaged
  facepipe install facefusion|deepfacelive PATH
                      copy published swap models (models/trained/) into a FaceFusion or
                      DeepFaceLive installation as it reads them; --occluder TARGET also puts the
                      target's XSeg in FaceFusion's occluder slot; --undo puts back what it replaced

`build` and `demo` take `--preset NAME` (demo, quality, gpu: facepipe/presets/) or `--config FILE`
(a Dagster run config in YAML or JSON, `{ops: {identity__identity_model: {config: {epochs: 80}}}}`);
it is checked against every job before anything runs, and a problem is one line on stderr (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from facepipe.pairs import PairsFileError
from facepipe.partition_settings import PartitionSettingsError
from facepipe.partitions import InvalidPartitionKey
from facepipe.plan import BuildInputError, plan_build
from facepipe.presets import RunConfig, RunConfigError
from facepipe.resources import FacepipeSettings, default_data_root, use_project_instance


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


# Progress and cache hits at INFO; Dagster's per-step DEBUG events (step started, inputs, outputs)
# stay in the UI's run log unless `--log-level debug` asks for them here too.
LOG_LEVELS = ("debug", "info", "warning")


def console_logs(level: str) -> dict:
    return {"loggers": {"console": {"config": {"log_level": level.upper()}}}}


def run_job(job_name: str, key: str, label: str, run_config: RunConfig | None = None,
            job_config: dict | None = None, log_level: str = "info") -> bool:
    from dagster import DagsterInstance

    from facepipe.assets.training import RUNS_ALONE_TAG
    from facepipe.definitions import defs
    from facepipe.slots import process_tags

    # The process running it, so that a later build can tell when it was killed (facepipe.slots);
    # this command makes one run at a time, so its trainings may take every core.
    tags = {**process_tags(), RUNS_ALONE_TAG: "true",
            **({"facepipe/run_config": run_config.source} if run_config and run_config.ops else {})}
    # The folders as this command sees them now (--data-root, FACEPIPE_*), not as they were when
    # the code location was imported; they also show on the run's page.
    folders = {"resources": {"settings": {"config": FacepipeSettings().paths()}}}
    started = time.perf_counter()
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=DagsterInstance.get(), partition_key=key, raise_on_error=False,
        run_config={**console_logs(log_level), **(job_config or {}), **folders}, tags=tags,
    )
    print(f"{label}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - started:.1f}s (run {result.run_id})")
    if not result.success and was_interrupted(result):  # Ctrl+C stops the whole build, not just this run
        raise KeyboardInterrupt
    return result.success


INTERRUPTIONS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt")


def was_interrupted(result) -> bool:
    """Whether a run failed because it was interrupted (Ctrl+C, SIGTERM) rather than on its own."""
    for event in result.all_events:
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if error is not None and (error.cls_name in INTERRUPTIONS or
                                  any(cause.cls_name in INTERRUPTIONS for cause in iter_causes(error))):
            return True
    return False


def iter_causes(error):
    while (error := error.cause or error.context) is not None:
        yield error


def build(data_root: Path, roles: list[str], partition: str | None, pairs: bool = True,
          run_config: RunConfig | None = None, job_configs: dict[str, dict] | None = None,
          log_level: str = "info") -> bool:
    """Check and plan (`plan_build`), register, then make each planned run with its own job's part
    of the run config (`job_configs`, from `checked_run_config`)."""
    from dagster import DagsterInstance

    from facepipe.slots import free_dead_runs
    from facepipe.store import sweep_temporaries

    plan = plan_build(data_root, roles, partition, pairs)
    register(data_root)
    free_dead_runs(DagsterInstance.get(), print)  # a build killed earlier must not block this one
    settings = FacepipeSettings()
    swept = settings.store.sweep() + [found for folder in ("trained", "identities")
                                      for found in sweep_temporaries(settings.models_path / folder)]
    if swept:
        print(f"removed {len(swept)} temporary file(s) and folder(s) left by killed runs in the store and "
              f"models folder ({sum(size for _path, size in swept) / (1 << 20):.1f} MB freed)")
    job_configs = job_configs or {}
    ok = True
    for run in plan:
        ok &= run_job(run.job, run.key, run.label, run_config, job_configs.get(run.job), log_level)
    return ok


def verify() -> int:
    """`facepipe verify`: every output on this machine against its record (content hashes)."""
    from facepipe.automation.verify import verify_store

    store = FacepipeSettings().store
    checked, damaged = verify_store(store)
    for line in damaged:
        print(line)
    print(f"store {store.root}: {checked} outputs, " + (f"{len(damaged)} damaged (removed)" if damaged else "all intact"))
    return 1 if damaged else 0


def checked_run_config(preset: str | None, config_file: Path | None) -> tuple[RunConfig | None, dict[str, dict]]:
    """The chosen preset or file, validated against every job, and each job's part of it;
    the settings it applies are printed (the run log's record of what this build used)."""
    from facepipe import presets
    from facepipe.presets.check import job_configs

    if preset is None and config_file is None:
        return None, {}
    run_config = presets.load_preset(preset) if preset is not None else presets.load_file(config_file)
    parts = job_configs(run_config)
    for line in presets.settings_lines(run_config):
        print(line)
    return run_config, parts


def show_presets(name: str | None, group: str | None) -> None:
    from facepipe import presets

    if name is None:
        for preset in presets.preset_names():
            summary = presets.preset_text(preset).splitlines()[0].lstrip("# ").removeprefix(f"{preset}: ")
            print(f"{preset:10s} {summary}")
        return
    if group is None:
        print(presets.preset_text(name), end="")
        return
    part = presets.for_job(presets.load_preset(name).config, group)
    print(yaml_dump(part) if part else f"# preset {name} sets nothing for the {group} assets (their defaults apply)")


def yaml_dump(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False).rstrip()


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
        chosen = sub.add_mutually_exclusive_group()
        chosen.add_argument("--preset", metavar="NAME", help="a shipped run config: demo (the defaults), quality, gpu")
        chosen.add_argument("--config", metavar="FILE", type=Path, help="a Dagster run config file (YAML or JSON)")
        sub.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                         help="run log shown here (debug adds Dagster's step events; default info)")
    commands.add_parser("verify", help="check the store's outputs against their records; remove damaged ones")
    show = commands.add_parser("presets", help="list the presets, or print one (--group: only one job's ops, "
                                                "ready for the launchpad)")
    show.add_argument("name", nargs="?", help="the preset to print")
    show.add_argument("--group", choices=["identity", "target", "pair"], help="only the ops of this group's job")
    put = commands.add_parser("install", help="copy published swap models into FaceFusion or DeepFaceLive")
    put.add_argument("runtime", choices=["facefusion", "deepfacelive"])
    put.add_argument("path", type=Path, help="FaceFusion: the folder with facefusion.py; DeepFaceLive: its userdata "
                                             "folder (the one with dfm_models/)")
    put.add_argument("--model", action="append", metavar="NAME",
                     help="a published swap model, <identity>_<target> (repeatable; default: every one)")
    put.add_argument("--occluder", metavar="TARGET", help="FaceFusion: also install this target's XSeg occluder")
    put.add_argument("--slot", type=int, choices=[1, 2, 3], default=1,
                     help="the occluder slot it replaces, xseg_N (default 1; FaceFusion's --face-occluder-model)")
    put.add_argument("--undo", action="store_true", help="put back what facepipe replaced, remove what it wrote")
    args = parser.parse_args(argv)
    if args.command == "install":  # needs no Dagster instance or data folder
        return install_command(args)

    data_root = args.data_root or Path(default_data_root())
    os.environ["FACEPIPE_DATA"] = str(data_root)  # the resource's default, for in-process runs
    use_project_instance()
    try:
        return run_command(args, data_root)
    except (PairsFileError, PartitionSettingsError, RunConfigError, BuildInputError, InvalidPartitionKey) as error:
        # (the other bad inputs fail inside Dagster runs, named there)
        print(f"facepipe: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facepipe: interrupted; run the same command again to continue (trainings resume from their "
              "last checkpoint, finished stages are cache hits)", file=sys.stderr)
        return 130


def install_command(args: argparse.Namespace) -> int:
    from facepipe.install import InstallError, run_command as run_install
    from facepipe.runtimes import NotAnInstallation

    try:
        run_install(args.runtime, args.path, FacepipeSettings().models_path, args.model or [], args.occluder,
                    args.slot, args.undo)
    except (InstallError, NotAnInstallation) as error:
        print(f"facepipe install: {error}", file=sys.stderr)
        return 2
    return 0


def run_command(args: argparse.Namespace, data_root: Path) -> int:
    if args.command == "presets":
        show_presets(args.name, args.group)
        return 0
    if args.command in ("build", "demo"):  # a bad run config stops here, before anything is written or run
        run_config, job_configs = checked_run_config(args.preset, args.config)
    if args.command in ("sample", "demo"):
        from facepipe.pairs import declare_pair
        from facepipe.sample import IDENTITY_KEY, TARGET_KEY, build_sample

        written = build_sample(data_root)
        declare_pair(data_root, IDENTITY_KEY, TARGET_KEY)
        print(f"sample media written under {data_root} (changed: {written['changed'] or 'nothing'}); "
              f"pair {IDENTITY_KEY}|{TARGET_KEY} declared in {data_root / 'pairs.toml'}")
    if args.command == "register":
        register(data_root)
    if args.command == "verify":
        return verify()
    if args.command in ("build", "demo"):
        return 0 if build(data_root, args.role or ["identity", "target"], args.partition, pairs=not args.role,
                          run_config=run_config, job_configs=job_configs, log_level=args.log_level) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
