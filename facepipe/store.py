"""Content-addressed artifact store.

Every asset output lives in `<root>/<asset>/<partition>/<fingerprint>/`, where the fingerprint
hashes the asset's code version, its effective config and the data versions of its inputs.
A folder that exists is complete: builds happen in a temporary sibling folder that is fsynced
and renamed into place only at the end, so a killed run never leaves something that looks
valid. `current.json` beside the fingerprint folders points at the output of the latest
successful materialization; downstream assets read their inputs through it, and a failed run
never moves it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from facepipe.partitions import InvalidPartitionKey, validate_key

RECORD = "_artifact.json"
CURRENT = "current.json"


class MissingInput(RuntimeError):
    """An upstream output this build needs has never been materialized."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    fingerprint: str
    content_hash: str
    record: dict[str, Any]
    reused: bool = False

    @property
    def metadata(self) -> dict[str, Any]:
        return self.record.get("metadata", {})


def canonical_json(value: Any) -> bytes:
    """JSON bytes that depend only on the value: sorted keys, no whitespace variation."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def fingerprint(code_version: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
    payload = {"code_version": code_version, "config": config, "inputs": inputs}
    return hashlib.sha256(canonical_json(payload)).hexdigest()[:32]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_files(folder: Path) -> list[Path]:
    """Files under `folder` (relative, sorted by POSIX path), excluding the store's own record."""
    files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
    return sorted((p for p in files if p.as_posix() != RECORD), key=lambda p: p.as_posix())


def content_hash(folder: Path) -> tuple[str, dict[str, str]]:
    """Hash of a folder's content: sha256 over sorted (relative path, file sha256) pairs."""
    hashes = {p.as_posix(): file_sha256(folder / p) for p in tree_files(folder)}
    return hashlib.sha256(canonical_json(hashes)).hexdigest(), hashes


def fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for directory in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old bytes or the new ones, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")  # swept by checkpoints.remove_stale_temporaries
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; published files must be readable by the swapper
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ArtifactStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def partition_dir(self, asset: str, partition: str) -> Path:
        """`<root>/<asset>/<key>`; a pair key "identity|target" becomes `<identity>/<target>`.
        Keys become path components: each is validated so that no key can escape the store."""
        parts = asset.split("/")
        if not all(parts) or any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid asset name {asset!r}")
        keys = partition.split("|") if isinstance(partition, str) else [partition]
        if len(keys) > 2:
            raise InvalidPartitionKey(f"invalid partition {partition!r}: at most two dimensions (identity|target)")
        return self.root.joinpath(*parts, *(validate_key(k) for k in keys))

    def lookup(self, asset: str, partition: str, fp: str) -> Artifact | None:
        folder = self.partition_dir(asset, partition) / fp
        record_path = folder / RECORD
        if not record_path.is_file():
            return None
        record = json.loads(record_path.read_text())
        return Artifact(folder, fp, record["content_hash"], record, reused=True)

    def build(
        self,
        asset: str,
        partition: str,
        fp: str,
        write: Callable[[Path], dict[str, Any] | None],
        lineage: dict[str, Any] | None = None,
    ) -> Artifact:
        """Reuse the output for `fp`, or run `write(tmp_folder)` and move it into place.

        `write` fills the folder and returns JSON-able metadata, which is kept in the record so
        that a cache hit reports the same metadata as the build that made it.
        """
        if found := self.lookup(asset, partition, fp):
            self.set_current(asset, partition, found)
            return found
        parent = self.partition_dir(asset, partition)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-{fp}-"))
        try:
            metadata = write(tmp) or {}
            digest, files = content_hash(tmp)
            record = {
                "asset": asset,
                "partition": partition,
                "fingerprint": fp,
                "content_hash": digest,
                "files": files,
                "metadata": metadata,
                **(lineage or {}),
            }
            (tmp / RECORD).write_bytes(json.dumps(record, sort_keys=True, indent=2).encode())
            fsync_tree(tmp)
            final = parent / fp
            try:
                os.rename(tmp, final)
            except OSError:
                # Another run finished the same fingerprint first; its output is equivalent.
                if not (final / RECORD).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        artifact = Artifact(final, fp, digest, record, reused=False)
        self.set_current(asset, partition, artifact)
        return artifact

    def set_current(self, asset: str, partition: str, artifact: Artifact) -> None:
        pointer = {"fingerprint": artifact.fingerprint, "content_hash": artifact.content_hash}
        atomic_write_bytes(self.partition_dir(asset, partition) / CURRENT, canonical_json(pointer))

    def current(self, asset: str, partition: str) -> Artifact:
        """The latest successful output of `asset` for `partition`, or a clear MissingInput."""
        pointer_path = self.partition_dir(asset, partition) / CURRENT
        if not pointer_path.is_file():
            raise MissingInput(
                f"'{asset}' has no output for partition '{partition}' yet: materialize "
                f"'{asset}' for partition '{partition}' first (or materialize its whole chain)."
            )
        pointer = json.loads(pointer_path.read_text())
        found = self.lookup(asset, partition, pointer["fingerprint"])
        if found is None:
            raise MissingInput(
                f"the output of '{asset}' for partition '{partition}' was removed from the store "
                f"({pointer_path.parent / pointer['fingerprint']}): materialize '{asset}' again."
            )
        return found
