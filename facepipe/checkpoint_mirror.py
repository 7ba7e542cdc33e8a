"""Training checkpoints mirrored to the store's object storage, so that a training stopped on
one machine (a crash, a preempted node, a Celery step retried elsewhere) continues on another.

A checkpoint folder holds the weights, the training state and a manifest with their checksums,
written last. The mirror uploads the manifest last too, so a remote folder with a manifest is
complete; and the engine verifies every checksum of a downloaded checkpoint before resuming from
it (a damaged one is skipped with a warning, as a damaged local one is).
"""

from __future__ import annotations

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
    """Download the newest remote checkpoint if it is further along than every local one.
    Returns its name, or None when this machine is already as far."""
    local = list_checkpoints(checkpoints_dir)
    remote_positions = sorted((checkpoint_position(name), name) for name in remote.folders(relative)
                              if checkpoint_position(name))
    if not remote_positions or (local and remote_positions[-1][0] <= local[-1].position):
        return None
    name = remote_positions[-1][1]
    # `.tmp-` names are swept by the engine if this is interrupted; renamed into place when whole.
    temporary = checkpoints_dir / f".tmp-{name}-pulled"
    temporary.mkdir(parents=True, exist_ok=True)
    remote.download(relative / name, FILES, temporary)
    temporary.rename(checkpoints_dir / name)
    return name
