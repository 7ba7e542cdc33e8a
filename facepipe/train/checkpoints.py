"""Checkpoint files: atomic writes, checksums, finding the newest good one, pruning.

Layout under ``<run_dir>/<resume_key>/checkpoints/``::

    ckpt-e0003-s000000/        3 epochs done, 0 steps into epoch 4 (an epoch checkpoint)
        model.safetensors      the task's weights_to_save(model)
        state.pt               everything else; loads with torch.load(weights_only=True)
        manifest.json          sha256 + size of both files; written last
    ckpt-e0003-s000012/        saved on an interrupt or error 12 optimizer steps into epoch 4

A checkpoint folder is assembled under a temporary name, every file fsynced, and renamed into
place in one step, so a killed process never leaves a folder that looks complete. The
manifest's checksums catch what the rename cannot (a disk that lies, a copied-in partial file).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from facepipe.disk import require_free_space
from facepipe.store import atomic_write_bytes, file_sha256, fsync_dir  # noqa: F401 (atomic_write_bytes re-exported)

MANIFEST_FORMAT = "facepipe.train.checkpoint/1"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_NAME_PATTERN = re.compile(r"ckpt-e(\d{4,})-s(\d{6,})")


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint failed its checksum or is incomplete and was skipped."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    epochs_completed: int
    step_in_epoch: int  # optimizer steps already done in the epoch after epochs_completed

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def is_epoch_end(self) -> bool:
        return self.step_in_epoch == 0

    @property
    def position(self) -> tuple[int, int]:
        return (self.epochs_completed, self.step_in_epoch)


def checkpoint_name(epochs_completed: int, step_in_epoch: int) -> str:
    return f"ckpt-e{epochs_completed:04d}-s{step_in_epoch:06d}"


def _write_and_fsync(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def weights_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of CPU copies (copies also untie shared tensors, which safetensors refuses).

    No metadata: identical tensors must give identical bytes, whenever and wherever saved.
    """
    plain = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in tensors.items()}
    return safetensors.torch.save(plain)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(
    checkpoints_dir: Path,
    *,
    epochs_completed: int,
    step_in_epoch: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    resume_key: str,
    check_state_loads: bool,
) -> Checkpoint:
    """Write one checkpoint atomically; an existing one at the same position is replaced.

    ``check_state_loads`` reads the state back with ``weights_only=True`` before committing it:
    a task whose optimizer or scheduler state holds arbitrary objects fails here, at the first
    save, with a clear message, instead of on the resume that needed it.
    """
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(epochs_completed, step_in_epoch)
    final = checkpoints_dir / name
    temporary = checkpoints_dir / f".tmp-{name}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()

    weights_bytes = weights_to_bytes(weights)
    state_buffer = io.BytesIO()
    torch.save(state, state_buffer)
    state_bytes = state_buffer.getvalue()
    if check_state_loads:
        try:
            torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True)
        except Exception as error:
            shutil.rmtree(temporary)
            raise TypeError(
                "training state cannot be saved loadably with torch.load(weights_only=True): "
                f"{error}. The task's optimizer/scheduler state must hold only tensors and plain "
                "Python values (no functions or custom objects)."
            ) from error

    try:
        require_free_space(checkpoints_dir, len(weights_bytes) + len(state_bytes))
        return _commit_checkpoint(checkpoints_dir, temporary, final, name, weights_bytes, state_bytes,
                                  resume_key=resume_key, epochs_completed=epochs_completed, step_in_epoch=step_in_epoch)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)  # a failed save (a full disk) must not keep the space
        raise


def _commit_checkpoint(checkpoints_dir: Path, temporary: Path, final: Path, name: str, weights_bytes: bytes,
                       state_bytes: bytes, *, resume_key: str, epochs_completed: int, step_in_epoch: int) -> Checkpoint:
    _write_and_fsync(temporary / WEIGHTS_FILE, weights_bytes)
    _write_and_fsync(temporary / STATE_FILE, state_bytes)
    manifest = {
        "format": MANIFEST_FORMAT,
        "resume_key": resume_key,
        "epochs_completed": epochs_completed,
        "step_in_epoch": step_in_epoch,
        "files": {
            WEIGHTS_FILE: {"sha256": _sha256(weights_bytes), "bytes": len(weights_bytes)},
            STATE_FILE: {"sha256": _sha256(state_bytes), "bytes": len(state_bytes)},
        },
    }
    # The manifest goes last: a folder without one was never finished.
    _write_and_fsync(temporary / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    fsync_dir(temporary)

    displaced = None
    if final.exists():
        displaced = checkpoints_dir / f".old-{name}-{os.getpid()}"
        os.replace(final, displaced)
    os.replace(temporary, final)
    fsync_dir(checkpoints_dir)
    if displaced is not None:
        shutil.rmtree(displaced, ignore_errors=True)
    return Checkpoint(final, epochs_completed, step_in_epoch)


def checkpoint_position(name: str) -> tuple[int, int] | None:
    """(epochs completed, step in epoch) of a checkpoint folder name, None for any other name."""
    match = _NAME_PATTERN.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def list_checkpoints(checkpoints_dir: Path) -> list[Checkpoint]:
    """Checkpoint folders by position, oldest first (unverified; see find_latest_valid)."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for entry in checkpoints_dir.iterdir():
        position = checkpoint_position(entry.name)
        if position and entry.is_dir():
            found.append(Checkpoint(entry, *position))
    return sorted(found, key=lambda checkpoint: checkpoint.position)


def checkpoint_problem(checkpoint: Checkpoint) -> str | None:
    """Why this checkpoint cannot be trusted (naming the file), or None if it checks out."""
    try:
        manifest = json.loads(checkpoint.manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{checkpoint.manifest_path} is missing (the save never finished)"
    except (OSError, ValueError) as error:
        return f"{checkpoint.manifest_path} is unreadable: {error}"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return f"{checkpoint.manifest_path} is not a {MANIFEST_FORMAT} manifest"
    if (manifest.get("epochs_completed"), manifest.get("step_in_epoch")) != checkpoint.position:
        return f"{checkpoint.manifest_path} describes another position than its folder name"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return f"{checkpoint.manifest_path} lists no files"
    for file_name in (WEIGHTS_FILE, STATE_FILE):
        expected = files.get(file_name)
        path = checkpoint.path / file_name
        if not expected:
            return f"{checkpoint.manifest_path} lists no checksum for {file_name}"
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{path} has {size} bytes, the manifest says {expected.get('bytes')} (truncated or overwritten)"
        if file_sha256(path) != expected.get("sha256"):
            return f"{path} does not match its sha256 in {checkpoint.manifest_path} (corrupt)"
    return None


def find_latest_valid(checkpoints_dir: Path, warn: Callable[[str], None]) -> Checkpoint | None:
    """The newest checkpoint whose checksums hold; each one skipped is reported through ``warn``."""
    for checkpoint in reversed(list_checkpoints(checkpoints_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        warn(f"skipping corrupt checkpoint {checkpoint.path}: {problem}; falling back to the previous one")
    return None


def load_checkpoint(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights (safetensors) and state (``weights_only=True``): nothing here can run code."""
    weights = safetensors.torch.load_file(str(checkpoint.weights_path), device="cpu")
    state = torch.load(checkpoint.state_path, map_location="cpu", weights_only=True)
    return weights, state


def prune_checkpoints(checkpoints_dir: Path, keep_last: int, best_epoch: int | None) -> list[Path]:
    """Keep the last ``keep_last`` epoch checkpoints, the best epoch's, and the newest of all
    (which may be mid-epoch); remove the rest, returning what was removed."""
    checkpoints = list_checkpoints(checkpoints_dir)
    if not checkpoints:
        return []
    epoch_ends = [checkpoint for checkpoint in checkpoints if checkpoint.is_epoch_end]
    keep = {checkpoint.path for checkpoint in epoch_ends[-keep_last:]}
    keep.add(checkpoints[-1].path)
    if best_epoch is not None:
        keep.add(checkpoints_dir / checkpoint_name(best_epoch, 0))
    removed = []
    for checkpoint in checkpoints:
        if checkpoint.path not in keep:
            shutil.rmtree(checkpoint.path)
            removed.append(checkpoint.path)
    if removed:
        fsync_dir(checkpoints_dir)
    return removed


def remove_stale_temporaries(folder: Path) -> None:
    """Half-written files and folders of a killed save (ours: the caller holds the run lock)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith((".tmp-", ".old-")):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@contextmanager
def run_lock(run_key_dir: Path) -> Iterator[None]:
    """One process per resume key: two trainings writing the same checkpoints would interleave.

    An OS file lock, so a killed process releases it by dying. (No-op where fcntl is missing.)
    """
    run_key_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path = run_key_dir / ".lock"
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise RuntimeError(
                f"another process is training into {run_key_dir} (it holds {lock_path}); "
                "wait for it to finish or stop it first"
            ) from error
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
