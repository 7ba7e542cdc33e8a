"""`facepipe install RUNTIME PATH`: published models into a runtime's folders, in the form it reads.

FaceFusion gets only ``<name>.dfm`` in ``.assets/models/custom/`` (every other file there would be
listed as a model too: a card or hash beside the model shadows it) and, if asked, a target's
occluder as ``.assets/models/xseg_N.onnx`` with the ``xseg_N.hash`` FaceFusion checks it against.
DeepFaceLive gets ``<name>.dfm`` in its ``dfm_models/``. See facepipe.runtimes for each rule.

Nothing is lost: a file that is replaced or moved aside (an older model, FaceFusion's own
occluder, a stray card beside a model) goes to ``.facepipe_backup/`` in the runtime's folder
(a dot folder: neither runtime lists it), and ``installed.json`` there records what facepipe
wrote. ``--undo`` puts the backups back and removes what facepipe wrote, leaving any file that
was changed since alone. Every write is atomic. After installing, each model is listed and run
the way the runtime does it (facepipe.runtimes) on a grey crop, so a file it would not load is
reported here, not in the runtime.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facepipe.export import crc32_hex
from facepipe.registry import TRAINED, read_index
from facepipe.runtimes import DeepFaceLive, FaceFusion, locate
from facepipe.store import atomic_write_bytes, file_sha256

BACKUP_FOLDER = ".facepipe_backup"
MANIFEST = "installed.json"


class InstallError(ValueError):
    """What was asked cannot be installed (one line saying why and what to do)."""


@dataclass
class InstallReport:
    lines: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)


# ---------------------------------------------------------------------------------------------
# Backups and the manifest of what facepipe wrote


class Ledger:
    """``<base>/.facepipe_backup/``: backups of what facepipe replaced or moved aside, and
    ``installed.json``: {path relative to base: {"sha256": what facepipe wrote there (None: it only
    moved the file aside), "backup": where the file that was there before is kept (None: none)}}."""

    def __init__(self, base: Path):
        self.base = base
        self.folder = base / BACKUP_FOLDER
        path = self.folder / MANIFEST
        self.entries: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}

    def relative(self, path: Path) -> str:
        return path.relative_to(self.base).as_posix()

    def wrote(self, path: Path) -> bool:
        entry = self.entries.get(self.relative(path))
        return bool(entry) and entry["sha256"] is not None and path.is_file() and file_sha256(path) == entry["sha256"]

    def set_aside(self, path: Path) -> str | None:
        """Clear ``path`` for a new file; returns where the file from before facepipe is kept.
        A file facepipe wrote is dropped (the one before it is backed up already); any other is
        moved into the backup folder (numbered when an earlier backup has its name)."""
        key = self.relative(path)
        if not path.exists():
            return self.entries.get(key, {}).get("backup")
        if self.wrote(path):
            path.unlink()
            return self.entries[key]["backup"]
        backup = self.folder / key
        number = 1
        while backup.exists():
            number += 1
            backup = self.folder / f"{key}.{number}"
        backup.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, backup)
        return self.relative(backup)

    def save(self) -> None:
        atomic_write_bytes(self.folder / MANIFEST, (json.dumps(self.entries, indent=2, sort_keys=True) + "\n").encode())


def place(ledger: Ledger, data: bytes, path: Path, report: InstallReport) -> None:
    """Write ``data`` at ``path`` (atomically), setting aside what was there."""
    key = ledger.relative(path)
    if path.is_file() and path.read_bytes() == data:
        report.say(f"  {key}: unchanged (same bytes)")
        return
    backup = ledger.set_aside(path)
    atomic_write_bytes(path, data)
    ledger.entries[key] = {"sha256": file_sha256(path), "backup": backup}
    report.say(f"  {key}: written" + (f"; the file it replaced is kept as {backup}" if backup else ""))


def move_aside(ledger: Ledger, path: Path, why: str, report: InstallReport) -> None:
    backup = ledger.set_aside(path)
    ledger.entries[ledger.relative(path)] = {"sha256": None, "backup": backup}
    report.say(f"  {ledger.relative(path)}: moved to {backup} ({why})")


# ---------------------------------------------------------------------------------------------
# What to install


def published_swap_models(models_root: Path, names: list[str] | None) -> list[Path]:
    """The ``.dfm`` files of the chosen published swap models (all when ``names`` is empty),
    each checked against the sha256 in its card."""
    index = read_index(models_root)["models"]
    swaps = sorted(name for name, entry in index.items() if entry.get("kind") == "swap")
    folder = Path(models_root) / TRAINED
    if not swaps:
        raise InstallError(f"{folder / 'index.json'} lists no swap model; build a pair first (facepipe build)")
    unknown = [name for name in names or [] if name not in swaps]
    if unknown:
        raise InstallError(f"no published swap model {', '.join(unknown)} in {folder}; published: {', '.join(swaps)}")
    paths = []
    for name in names or swaps:
        path, card = folder / f"{name}.dfm", folder / f"{name}.json"
        if not path.is_file():
            raise InstallError(f"{path} is listed in index.json but missing; rebuild the pair (facepipe build)")
        if card.is_file() and json.loads(card.read_text()).get("sha256") != file_sha256(path):
            raise InstallError(f"{path} does not match the sha256 in {card.name}; it is damaged: rebuild the pair")
        paths.append(path)
    return paths


def published_occluder(models_root: Path, target: str) -> Path:
    folder = Path(models_root) / TRAINED
    entry = read_index(models_root)["models"].get(f"{target}_xseg")
    path = folder / f"{target}_xseg.onnx"
    if not entry or entry.get("kind") != "occluder" or not path.is_file():
        occluders = sorted(n[: -len("_xseg")] for n, e in read_index(models_root)["models"].items() if e.get("kind") == "occluder")
        raise InstallError(f"no published occluder for target {target!r} in {folder}; targets with one: "
                           f"{', '.join(occluders) or 'none (build a pair first)'}")
    return path


# ---------------------------------------------------------------------------------------------
# Checking what was installed, the way the runtime will


def check_installed(runtime: FaceFusion | DeepFaceLive, model: Path, report: InstallReport) -> None:
    import onnxruntime as ort

    listed = runtime.listed()
    names = [name for name, path in listed.items() if path == model]
    if not names:
        raise InstallError(f"{runtime.label} would not list {model} as a model after installing it; nothing else was changed")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    grey = np.full((size, size, 3), 128, dtype=np.uint8)
    outputs = runtime.run(session, grey)
    if not all(np.isfinite(o).all() for o in outputs):
        raise InstallError(f"{model} gives non-finite outputs in onnxruntime; rebuild the pair")
    inputs = ", ".join(f"{i.name} {i.shape}" for i in session.get_inputs())
    report.say(f"  checked: {runtime.label} lists it as {names[0]!r}; onnxruntime runs it as {runtime.label} calls it "
               f"({inputs}; outputs by position {[list(o.shape) for o in outputs]})")


# ---------------------------------------------------------------------------------------------
# The command


def install(runtime_name: str, root: Path, models_root: Path, names: list[str] | None = None,
            occluder: str | None = None, slot: int = 1) -> InstallReport:
    runtime = locate(runtime_name, root)
    if occluder and not isinstance(runtime, FaceFusion):
        raise InstallError("--occluder is for FaceFusion only (DeepFaceLive takes no occluder model)")
    models = published_swap_models(models_root, names)
    occluder_source = published_occluder(models_root, occluder) if occluder else None
    report = InstallReport()
    base = runtime.models if isinstance(runtime, FaceFusion) else runtime.swap_folder
    ledger = Ledger(base)
    report.say(f"{runtime.label} at {root}:")
    for model in models:
        destination = runtime.swap_folder / model.name
        place(ledger, model.read_bytes(), destination, report)
        if isinstance(runtime, FaceFusion):
            # FaceFusion lists these under the model's own name, in its place.
            for sibling in sorted(runtime.swap_folder.iterdir()):
                if sibling.stem == model.stem and sibling != destination and not sibling.name.startswith((".", "__")):
                    move_aside(ledger, sibling, f"FaceFusion would load it as custom/{model.stem} instead of the model", report)
        check_installed(runtime, destination, report)
    if occluder_source is not None:
        target = runtime.occluder(slot)
        data = occluder_source.read_bytes()
        place(ledger, data, target, report)
        # Last: a hash that does not match makes FaceFusion delete the model and download its own.
        place(ledger, crc32_hex(occluder_source).encode("ascii"), target.with_suffix(".hash"), report)
        if not runtime.hash_valid(target):
            raise InstallError(f"{target.with_suffix('.hash')} does not match {target}; run the install again")
    ledger.save()
    report.say(usage(runtime, root, models, occluder_source is not None, slot))
    report.say(f"undo: facepipe install {runtime.name} {root} --undo   (backups in {ledger.folder})")
    return report


def usage(runtime: FaceFusion | DeepFaceLive, root: Path, models: list[Path], occluder: bool, slot: int) -> str:
    if isinstance(runtime, FaceFusion):
        mask = f" --face-mask-types box occlusion --face-occluder-model xseg_{slot}" if occluder else ""
        return (f"use: python facefusion.py run --processors deep_swapper --deep-swapper-model custom/{models[0].stem}{mask}"
                f"   (--deep-swapper-morph 0-100 blends from the target's own face to the swap; default 100)")
    return ("use: DeepFaceLive > Face swapper > Model: " + ", ".join(m.stem for m in models)
            + "   (its morph control starts at 0.75: set it to 1.00 for the full swap)")


def undo(runtime_name: str, root: Path) -> InstallReport:
    """Put back what facepipe replaced or moved aside and remove what it wrote, except where the
    file was changed since."""
    runtime = locate(runtime_name, root)
    base = runtime.models if isinstance(runtime, FaceFusion) else runtime.swap_folder
    ledger = Ledger(base)
    report = InstallReport()
    report.say(f"{runtime.label} at {root}:" if ledger.entries else f"{runtime.label} at {root}: nothing installed by facepipe")
    for key, entry in sorted(ledger.entries.items()):
        path = base / key
        if path.exists() and (entry["sha256"] is None or not ledger.wrote(path)):
            report.say(f"  {key}: changed since facepipe's install; left as it is"
                       + (f" (the earlier file is in {entry['backup']})" if entry["backup"] else ""))
            continue
        path.unlink(missing_ok=True)
        if entry["backup"]:
            os.replace(base / entry["backup"], path)
            report.say(f"  {key}: restored from {entry['backup']}")
        else:
            report.say(f"  {key}: removed")
        del ledger.entries[key]
    kept = [ledger.relative(p) for p in sorted(ledger.folder.rglob("*")) if p.is_file() and p.name != MANIFEST]
    if ledger.entries or kept:
        ledger.save()
        if kept:
            report.say(f"  still kept in {BACKUP_FOLDER}/: {', '.join(kept)}")
    elif ledger.folder.is_dir():
        shutil.rmtree(ledger.folder)
    return report


def run_command(runtime: str, root: Path, models_root: Path, names: list[str], occluder: str | None, slot: int,
                do_undo: bool, say: Callable[[str], None] = print) -> None:
    report = undo(runtime, root) if do_undo else install(runtime, root, models_root, names, occluder, slot)
    for line in report.lines:
        say(line)
