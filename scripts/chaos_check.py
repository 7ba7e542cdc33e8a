"""Build while killing the build: every kill is followed by the same command, and the result must
be what an uninterrupted build publishes, byte for byte.

    python scripts/chaos_check.py                                   # the embedded sample, 8 kills
    python scripts/chaos_check.py --data-root data --config my.yaml --kills 8 --seed 1
    python scripts/chaos_check.py --work /tmp/chaos --keep --attempt-timeout 900
    python scripts/chaos_check.py --stages identity__frames,pair__lora_adapter,publish   # fewer kills

First `facepipe build` runs once without interruption (the reference: its own store, models
folder and Dagster instance, with the project's dagster.yaml). Then, in a second set of fresh
folders, the same command is started again and again; each time the check waits until the
build enters the next target stage (decoding, landmarking, writing faces, each training, the
export, publishing), lets it work for a random part of the time that stage took in the
reference, and kills the whole process group with SIGKILL. After the last kill the command runs
to the end. No manual help is allowed: nothing is cleaned, freed or reset between attempts.

It fails (exit 1) if an attempt neither reaches its stage nor ends within --attempt-timeout
seconds (a hang), if the final build fails, or if any published artifact differs from the
reference (compared as scripts/rebuild_check.py compares two builds: everything under models/
and every file of each asset's current output in the store).
It prints where each kill landed, how many per stage, the restarts, the wall time and
"byte-identical: N artifacts".
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT_INSTANCE = REPO / ".dagster_home" / "dagster.yaml"
# (what triggers the kill, what the stage is called). A step key triggers on its STEP_START event;
# "publish" triggers on the export's "built" line, after which its files are copied to models/.
STAGES = [
    ("identity__frames", "decoding"),
    ("identity__landmarks", "landmarking"),
    ("identity__faces", "writing faces"),
    ("identity__identity_model", "training the identity model"),
    ("target__xseg_model", "training XSeg"),
    ("pair__lora_adapter", "training the LoRA adapter"),
    ("pair__onnx_export", "export"),
    ("publish", "publishing"),
]
STEP_EVENT = re.compile(r" - (?P<step>[a-z_]+__[a-z_]+) - (?P<event>STEP_START|STEP_SUCCESS|STEP_FAILURE) - ")
EXPORT_BUILT = re.compile(r"pair/onnx_export\[[^\]]+\]: (built|cache hit)")
PUBLISHED = re.compile(r" - pair__onnx_export - published ")


def load_rebuild_check():
    spec = importlib.util.spec_from_file_location("rebuild_check", REPO / "scripts" / "rebuild_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Folders:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_INSTANCE, self.home / "dagster.yaml")  # one training at a time, as users run it

    def env(self) -> dict[str, str]:
        return {**os.environ, "DAGSTER_HOME": str(self.home), "FACEPIPE_STORE": str(self.store),
                "FACEPIPE_MODELS": str(self.models), "PYTHONUNBUFFERED": "1"}


@dataclass
class Attempt:
    """One start of the build command, its output followed line by line."""

    command: list[str]
    folders: Folders
    log: Path
    started: float = field(default_factory=time.monotonic)
    running: dict[str, float] = field(default_factory=dict)  # step -> when its STEP_START was read
    durations: dict[str, float] = field(default_factory=dict)  # step -> seconds, for finished steps
    export_built: bool = False
    published: bool = False

    def start(self) -> None:
        self.handle = open(self.log, "ab")
        self.process = subprocess.Popen(self.command, cwd=REPO, env=self.folders.env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.process.stdout:
            self.handle.write(raw)
            self.lines.put((time.monotonic(), raw.decode(errors="replace")))
        self.lines.put((time.monotonic(), None))

    def follow(self, until, timeout: float) -> str:
        """Read lines until `until(line)` is true ("trigger"), the process ends ("ended") or
        `timeout` seconds pass ("timeout")."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                arrived, line = self.lines.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return "timeout"
                continue
            if line is None:
                self.process.wait()
                return "ended"
            self.note(arrived, line)
            if until(line):
                return "trigger"

    def drain(self) -> None:
        """Note the lines already read (up to the kill) without waiting for more."""
        while True:
            try:
                arrived, line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            self.note(arrived, line)

    def note(self, arrived: float, line: str) -> None:
        if match := STEP_EVENT.search(line):
            step, event = match["step"], match["event"]
            if event == "STEP_START":
                self.running[step] = arrived
            elif step in self.running:
                self.durations[step] = arrived - self.running.pop(step)
        if EXPORT_BUILT.search(line):
            self.export_built = True
        if PUBLISHED.search(line):
            self.published = True

    def stage_now(self) -> str:
        """Where the build is, from what it printed so far."""
        if self.export_built and "pair__onnx_export" in self.running:
            return "after publishing" if self.published else "publish"
        if self.running:
            return max(self.running, key=self.running.get)
        return "between steps (startup, registering, loading a job)"

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.handle.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        else:
            self.handle.close()


def trigger_for(stage: str):
    if stage == "publish":
        return lambda line: bool(EXPORT_BUILT.search(line))
    return lambda line: f" - {stage} - STEP_START - " in line


def stage_label(stage: str) -> str:
    return dict(STAGES).get(stage, stage)


def build_command(data_root: Path, config: Path | None) -> list[str]:
    command = [sys.executable, "-m", "facepipe.cli", "--data-root", str(data_root), "build", "--log-level", "debug"]
    return command + (["--config", str(config)] if config else [])


def run_to_end(command: list[str], folders: Folders, log: Path, timeout: float) -> tuple[int | None, float, dict]:
    """Run once without interruption: (exit status or None on a hang, seconds, step durations)."""
    attempt = Attempt(command, folders, log)
    attempt.start()
    outcome = attempt.follow(lambda line: False, timeout)
    attempt.close()
    return (attempt.process.returncode if outcome == "ended" else None), time.monotonic() - attempt.started, attempt.durations


def check(data_root: Path, config: Path | None, work: Path, kills: int, seed: int, attempt_timeout: float,
          stages: list[str] | None = None) -> int:
    rebuild_check = load_rebuild_check()
    command = build_command(data_root, config)
    rng = random.Random(seed)
    reference, chaos = Folders(work / "reference"), Folders(work / "chaos")
    for folders in (reference, chaos):
        folders.prepare()

    print(f"reference build (uninterrupted): {' '.join(command[1:])}", flush=True)
    status, seconds, durations = run_to_end(command, reference, work / "reference.log", attempt_timeout)
    if status != 0:
        print(f"reference build {'hung' if status is None else f'failed (exit {status})'}; see {work / 'reference.log'}",
              file=sys.stderr)
        return 1
    print(f"  done in {seconds:.1f} s", flush=True)

    started = time.monotonic()
    landed: list[str] = []
    restarts = 0
    for number in range(kills):
        aims = stages or [stage for stage, _ in STAGES]
        stage = aims[number % len(aims)]
        attempt = Attempt(command, chaos, work / "chaos.log")
        attempt.start()
        restarts += number > 0
        outcome = attempt.follow(trigger_for(stage), attempt_timeout)
        if outcome == "timeout":
            attempt.kill()
            print(f"HANG: attempt {number + 1} neither reached {stage_label(stage)} nor ended in {attempt_timeout:.0f} s "
                  f"(last stage: {attempt.stage_now()}); see {work / 'chaos.log'}", file=sys.stderr)
            return 1
        if outcome == "ended":
            print(f"  kill {number + 1}: the build ended (exit {attempt.process.returncode}) before "
                  f"{stage_label(stage)}; nothing killed", flush=True)
            attempt.close()
            if attempt.process.returncode == 0:
                break
            continue
        # In the stage: let it work for a random part of what it took in the reference.
        # (publishing takes milliseconds: killed at once)
        time.sleep(rng.uniform(0.0, 0.5 * durations.get(stage, 0.0)) if stage != "publish" else 0.0)
        attempt.drain()
        where = attempt.stage_now()
        attempt.kill()
        landed.append(where)
        print(f"  kill {number + 1}: aimed at {stage_label(stage)}, SIGKILL landed in {stage_label(where)} "
              f"after {time.monotonic() - attempt.started:.1f} s", flush=True)

    restarts += 1
    print("final build, restarted with the same command", flush=True)
    final = Attempt(command, chaos, work / "chaos.log")
    final.start()
    outcome = final.follow(lambda line: False, attempt_timeout)
    final.close()
    wall = time.monotonic() - started
    if outcome != "ended" or final.process.returncode != 0:
        what = "hung" if outcome == "timeout" else f"failed (exit {final.process.returncode})"
        print(f"the final build {what}; see {work / 'chaos.log'}", file=sys.stderr)
        return 1

    per_stage = Counter(landed)
    print(f"kills: {len(landed)}; per stage: "
          + ", ".join(f"{stage_label(stage)} {per_stage[stage]}" for stage, _ in STAGES)
          + "".join(f", {stage} {count}" for stage, count in per_stage.items() if stage not in dict(STAGES)))
    print(f"restarts: {restarts}; wall time {wall:.1f} s (the uninterrupted build: {seconds:.1f} s)")
    expected = rebuild_check.artifact_hashes(reference.store, reference.models)
    found = rebuild_check.artifact_hashes(chaos.store, chaos.models)
    differing = rebuild_check.differences(expected, found)
    if differing or not expected:
        for line in differing or ["no artifacts were published"]:
            print(f"  {line}", file=sys.stderr)
        print(f"NOT byte-identical: {len(differing)} of {len(set(expected) | set(found))} artifacts differ", file=sys.stderr)
        return 1
    print(f"byte-identical: {len(expected)} artifacts")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, help="media folder (read only); default: the embedded sample, "
                        "written into the work folder")
    parser.add_argument("--config", type=Path, help="run config for every build (YAML or JSON, as facepipe build --config)")
    parser.add_argument("--kills", type=int, help="SIGKILLs, one stage after another (default: one per stage aimed at)")
    parser.add_argument("--stages", help="comma-separated stages to aim at, in order (default: all: "
                        + ", ".join(stage for stage, _ in STAGES) + ")")
    parser.add_argument("--seed", type=int, default=0, help="seeds where in each stage the kill lands")
    parser.add_argument("--attempt-timeout", type=float, default=1800.0,
                        help="seconds an attempt may take to reach its stage or end (longer is a hang)")
    parser.add_argument("--work", type=Path, help="folder for both builds (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="facepipe-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data_root = load_rebuild_check().chosen_data_root(args.data_root, work)
        stages = args.stages.split(",") if args.stages else None
        if unknown := [stage for stage in stages or [] if stage not in dict(STAGES)]:
            raise SystemExit(f"--stages: unknown {', '.join(unknown)} (stages: {', '.join(dict(STAGES))})")
        return check(data_root, args.config.resolve() if args.config else None, work.resolve(),
                     args.kills if args.kills is not None else len(stages or STAGES), args.seed, args.attempt_timeout,
                     stages)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        elif args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
