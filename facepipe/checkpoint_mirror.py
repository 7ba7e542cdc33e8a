"""Training checkpoints mirrored to the store's object storage, so that a training stopped on
one machine (a crash, a preempted node, a Celery step retried elsewhere) continues on another.

A checkpoint folder holds the weights, the training state and a manifest with their checksums,
written last. The mirror uploads the manifest last too, so a remote folder with a manifest is
complete; and the engine verifies every checksum of a downloaded checkpoint before resuming from
it (a damaged one is skipped with a warning, as a damaged local one is).
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

from facepipe.object_storage import RemoteTree
from facepipe.train.checkpoints import (
    MANIFEST_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    checkpoint_position,
    list_checkpoints,
)

FILES = [WEIGHTS_FILE, STATE_FILE, MANIFEST_FILE]  # the manifest last


def push(remote: RemoteTree, relative: PurePosixPath, checkpoints_dir: Path) -> list[str]:
    """Upload the checkpoints the remote lacks (or holds another save of), remove those pruned here.
    Returns the names uploaded."""
    local = {checkpoint.path.name: checkpoint for checkpoint in list_checkpoints(checkpoints_dir)}
    uploaded = []
    for name, checkpoint in local.items():
        if remote.read(relative / name / MANIFEST_FILE) != (checkpoint.path / MANIFEST_FILE).read_bytes():
            remote.upload(checkpoint.path, relative / name, FILES)
            uploaded.append(name)
    for name in remote.folders(relative):
        if checkpoint_position(name) and name not in local:
            remote.remove(relative / name)
    return uploaded


def pull(remote: RemoteTree, relative: PurePosixPath, checkpoints_dir: Path) -> str | None:
    """Download the newest complete remote checkpoint if it is further along than every local one.
    Returns its name, or None when this machine is already as far (or the remote has nothing whole)."""
    local = list_checkpoints(checkpoints_dir)
    newest_local = local[-1].position if local else None
    remote_positions = sorted(((position, name) for name in remote.folders(relative)
                               if (position := checkpoint_position(name))), reverse=True)
    for position, name in remote_positions:
        if newest_local is not None and position <= newest_local:
            return None
        # `.tmp-` names are swept by the engine if this is interrupted; renamed into place when whole.
        temporary = checkpoints_dir / f".tmp-{name}-pulled"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        try:
            remote.download(relative / name, FILES, temporary)
        except FileNotFoundError:  # its upload never finished (the machine died): try the one before
            shutil.rmtree(temporary, ignore_errors=True)
            continue
        temporary.rename(checkpoints_dir / name)
        return name
    return None
