"""Content-addressed artifact store.

Every asset output lives in `<root>/<asset>/<partition>/<fingerprint>/`, where the fingerprint
hashes the asset's code version, its effective config and the data versions of its inputs.
A folder that exists is complete: builds happen in a temporary sibling folder that is fsynced
and renamed into place only at the end, so a killed run never leaves something that looks
valid. `current.json` beside the fingerprint folders points at the output of the latest
successful materialization; downstream assets read their inputs through it, and a failed run
never moves it. The root may also be an fsspec URL (object storage): see ArtifactStore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from facepipe.object_storage import RemoteTree, is_url, local_path
from facepipe.partitions import InvalidPartitionKey, validate_key

RECORD = "_artifact.json"
CURRENT = "current.json"
logger = logging.getLogger(__name__)


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


FSYNC_THREADS = 16  # fsync waits on the disk, not the CPU: many in flight share journal commits


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder. Files are synced by a pool of threads:
    one at a time, a folder of a thousand frames waits a journal commit per file (seconds)."""
    files = [path for path in sorted(folder.rglob("*")) if path.is_file()]
    with ThreadPoolExecutor(max_workers=FSYNC_THREADS) as pool:
        list(pool.map(fsync_file, files))
    for directory in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(directory)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Temporary names say whose they are, `.tmp-<name>~<host>~<pid>~<random>`, so that a sweep can
# tell what a killed run left behind from what a live one is writing.
TEMP_SEPARATOR = "~"
ABANDONED_AFTER_S = 7 * 24 * 3600  # another machine's temporaries (or unnamed ones) count as left after a week


def temp_prefix(name: str) -> str:
    return f".tmp-{name}{TEMP_SEPARATOR}{socket.gethostname()}{TEMP_SEPARATOR}{os.getpid()}{TEMP_SEPARATOR}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporary(entry: Path) -> bool:
    """Whether a `.tmp-*` entry was left by a process that is gone (on this machine), or is old."""
    if not entry.name.startswith(".tmp-"):
        return False
    parts = entry.name.split(TEMP_SEPARATOR)
    if len(parts) == 4 and parts[1] == socket.gethostname() and parts[2].isdigit():
        if not process_alive(int(parts[2])):
            return True
    try:
        return time.time() - entry.lstat().st_mtime > ABANDONED_AFTER_S
    except FileNotFoundError:
        return False


def tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())


def sweep_temporaries(folder: Path) -> list[tuple[Path, int]]:
    """Remove the stale temporaries directly in `folder`; returns (path, bytes) of each."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if stale_temporary(entry):
            try:
                size = tree_size(entry)
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            except FileNotFoundError:
                continue  # another sweep was first
            removed.append((entry, size))
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old bytes or the new ones, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name))  # swept by sweep_temporaries
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


def write_if_changed(path: Path, data: bytes) -> bool:
    """`atomic_write_bytes` unless the file already holds `data` (then nothing is written: a
    read-only folder is fine); returns whether it wrote."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


class ArtifactStore:
    """The store under `root`: a local folder, or an fsspec URL (s3://bucket/facepipe, gs://, az://).

    With a URL, every machine builds in and reads from its own cache folder (one per URL under
    `cache`), and the URL holds the shared truth: each artifact's record, its files under
    `<fingerprint>/<content hash>/` (content-addressed, so two machines that built the same
    fingerprint differently never overwrite each other's files), and the `current.json` pointers.
    Files are uploaded before the record, so a record always names a complete set. A local copy
    whose content differs from the remote record is replaced by the remote one, so every machine
    uses the same bytes. Downloads are checked file by file against the record; a damaged remote
    artifact is rebuilt and uploaded again, never trusted. Training checkpoints (`_runs/`) are
    built locally too and mirrored by facepipe.checkpoint_mirror.
    """

    def __init__(self, root: Path | str, cache: Path | str | None = None):
        self.remote = RemoteTree(str(root)) if is_url(root) else None
        if self.remote is None:
            self.root = local_path(root)
        elif cache is None:
            raise ValueError(f"store root {root} is remote: give a local cache folder (FACEPIPE_STORE_CACHE)")
        else:
            self.root = Path(cache) / hashlib.sha256(self.remote.url.encode()).hexdigest()[:16]

    def partition_dir(self, asset: str, partition: str) -> Path:
        """`<root>/<asset>/<key>`; a pair key "identity|target" becomes `<identity>/<target>`.
        Keys become path components: each is validated so that no key can escape the store."""
        return self.root.joinpath(*self._relative(asset, partition).parts)

    def _relative(self, asset: str, partition: str) -> PurePosixPath:
        parts = asset.split("/")
        if not all(parts) or any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid asset name {asset!r}")
        keys = partition.split("|") if isinstance(partition, str) else [partition]
        if len(keys) > 2:
            raise InvalidPartitionKey(f"invalid partition {partition!r}: at most two dimensions (identity|target)")
        return PurePosixPath(*parts, *(validate_key(k) for k in keys))

    def lookup(self, asset: str, partition: str, fp: str, warn: Callable[[str], None] | None = None) -> Artifact | None:
        """The finished output for `fp`; with a remote, the remote's version, downloaded if needed.
        A damaged local copy (files missing or of other sizes than recorded) is never returned:
        `warn` (default: this module's logger) says so, and a build replaces it."""
        local = self._intact(asset, partition, fp, warn or logger.warning)
        if self.remote is None:
            return local
        remote_record = self._remote_record(asset, partition, fp)
        if remote_record is None or (local and local.content_hash == remote_record["content_hash"]):
            return local  # build() uploads a local copy the remote lacks
        return self._fetch(asset, partition, fp, remote_record)

    def build(
        self,
        asset: str,
        partition: str,
        fp: str,
        write: Callable[[Path], dict[str, Any] | None],
        lineage: dict[str, Any] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> Artifact:
        """Reuse the output for `fp`, or run `write(tmp_folder)` and move it into place.

        `write` fills the folder and returns JSON-able metadata, which is kept in the record so
        that a cache hit reports the same metadata as the build that made it.
        """
        artifact = self.lookup(asset, partition, fp, warn)
        if artifact is None:
            parent = self.partition_dir(asset, partition)
            parent.mkdir(parents=True, exist_ok=True)
            sweep_temporaries(parent)  # what killed runs left here: never reused, only taking space
            tmp = Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(fp)))
            try:
                metadata = write(tmp) or {}
                digest, files = content_hash(tmp)
                record = {
                    "asset": asset,
                    "partition": partition,
                    "fingerprint": fp,
                    "content_hash": digest,
                    "files": files,
                    "sizes": {name: (tmp / name).stat().st_size for name in files},  # what a cache hit checks
                    "metadata": metadata,
                    **(lineage or {}),
                }
                (tmp / RECORD).write_bytes(json.dumps(record, sort_keys=True, indent=2).encode())
                if (parent / fp).exists() and self._intact(asset, partition, fp) is None:
                    retire(parent / fp)  # a damaged copy, found by the lookup above
                commit(tmp, parent / fp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            # Read back what is in place: another run on this machine may have finished it first.
            artifact = replace(self._local(asset, partition, fp), reused=False)
            if self.remote:  # the lookup found nothing usable there: upload, repairing a damaged copy
                self._upload(asset, partition, artifact)
        elif self.remote and self._remote_record(asset, partition, fp) is None:
            self._upload(asset, partition, artifact)  # cached here before this remote had it
        self.set_current(asset, partition, artifact)
        return artifact

    def set_current(self, asset: str, partition: str, artifact: Artifact) -> None:
        """Point `current.json` at `artifact`; unchanged pointers are not rewritten, so a run of pure
        cache hits writes nothing (and works from a read-only store)."""
        pointer = canonical_json({"fingerprint": artifact.fingerprint, "content_hash": artifact.content_hash})
        if self.remote:
            if self.remote.read(self._relative(asset, partition) / CURRENT) != pointer:
                self.remote.write(self._relative(asset, partition) / CURRENT, pointer)
            return
        write_if_changed(self.partition_dir(asset, partition) / CURRENT, pointer)

    def current(self, asset: str, partition: str) -> Artifact:
        """The latest successful output of `asset` for `partition`, or a clear MissingInput."""
        fp = self._pointer(asset, partition)["fingerprint"]
        found = self.lookup(asset, partition, fp, warn=lambda _message: None)  # said below, with what to do
        if found is None:
            local = self._local(asset, partition, fp)
            if local is not None and (problem := damage(local)):
                raise MissingInput(f"the output of '{asset}' for partition '{partition}' at {local.path} is damaged "
                                   f"({problem}): materialize '{asset}' again (it is rebuilt, not reused)")
            raise self._removed(asset, partition, fp)
        return found

    def current_damage(self, asset: str, partition: str) -> str | None:
        """What is wrong with the current output's files on this machine (cheap: presence and sizes),
        or None; None too where this machine holds no copy of a remote store's output."""
        fp = self._pointer(asset, partition)["fingerprint"]
        local = self._local(asset, partition, fp)
        if local is None:
            return None if self.remote else "its folder is gone"
        return damage(local)

    def _intact(self, asset: str, partition: str, fp: str, warn: Callable[[str], None] | None = None) -> Artifact | None:
        """The finished local output for `fp` if its files are all there at their recorded sizes."""
        local = self._local(asset, partition, fp)
        if local is not None and (problem := damage(local)):
            if warn:
                warn(f"{local.path} is damaged ({problem}); rebuilding it")
            return None
        return local

    def sweep(self) -> list[tuple[Path, int]]:
        """Stale temporaries in every partition folder of the store (not inside outputs, not in the
        training runs, which the engine sweeps under its run lock); returns (path, bytes) of each."""
        removed, level = [], [self.root] if self.root.is_dir() else []
        for _depth in range(5):  # <asset group>/<asset>/<key>[/<key>]: partition folders are this shallow
            removed += [found for folder in level for found in sweep_temporaries(folder)]
            level = [entry for folder in level for entry in sorted(folder.iterdir()) if entry.is_dir()
                     and not entry.name.startswith((".", "_")) and not (entry / RECORD).is_file()]
        return removed

    def verify(self, remove: bool = True) -> list[tuple[Artifact, str | None]]:
        """Every finished output on this machine checked against its record's sha256 of each file:
        (artifact, problem or None), sorted by folder. With `remove`, damaged outputs are retired
        so that the next build rebuilds them (a same-size change passes a cache hit's cheap check)."""
        found = []
        for record_path in sorted(self.root.rglob(RECORD)):
            folder = record_path.parent
            relative = folder.relative_to(self.root)
            if relative.parts[0].startswith("_") or any(part.startswith(".") for part in relative.parts):
                continue  # training runs, temporary and retired folders
            record = json.loads(record_path.read_text())
            artifact = Artifact(folder, record["fingerprint"], record["content_hash"], record, reused=True)
            problem = damage(artifact) or content_damage(artifact)
            if problem and remove:
                retire(folder)
            found.append((artifact, problem))
        return found

    def current_record(self, asset: str, partition: str) -> dict[str, Any]:
        """The record of the current output (lineage, content hash, metadata) without fetching its files."""
        fp = self._pointer(asset, partition)["fingerprint"]
        record = self._remote_record(asset, partition, fp) if self.remote else None
        if record is None and (local := self._local(asset, partition, fp)):
            record = local.record
        if record is None:
            raise self._removed(asset, partition, fp)
        return record

    def _local(self, asset: str, partition: str, fp: str) -> Artifact | None:
        folder = self.partition_dir(asset, partition) / fp
        if not (folder / RECORD).is_file():
            return None
        record = json.loads((folder / RECORD).read_text())
        return Artifact(folder, fp, record["content_hash"], record, reused=True)

    def _remote_record(self, asset: str, partition: str, fp: str) -> dict[str, Any] | None:
        data = self.remote.read(self._relative(asset, partition) / fp / RECORD)
        return None if data is None else json.loads(data)

    def _pointer(self, asset: str, partition: str) -> dict[str, str]:
        relative = self._relative(asset, partition) / CURRENT
        if self.remote:
            data = self.remote.read(relative)
        else:
            path = self.root.joinpath(*relative.parts)
            data = path.read_bytes() if path.is_file() else None
        if data is None:
            raise MissingInput(
                f"'{asset}' has no output for partition '{partition}' yet: materialize "
                f"'{asset}' for partition '{partition}' first (or materialize its whole chain)."
            )
        return json.loads(data)

    def _removed(self, asset: str, partition: str, fp: str) -> MissingInput:
        where = self.remote.url if self.remote else self.root
        return MissingInput(
            f"the output of '{asset}' for partition '{partition}' was removed from the store "
            f"({where}/{self._relative(asset, partition)}/{fp}) or does not match its record: "
            f"materialize '{asset}' again."
        )

    def _upload(self, asset: str, partition: str, artifact: Artifact) -> None:
        """The files under `<fp>/<content hash>/`, then the record: a remote record marks a complete set."""
        relative = self._relative(asset, partition) / artifact.fingerprint
        self.remote.upload(artifact.path, relative / artifact.content_hash, sorted(artifact.record["files"]))
        self.remote.upload(artifact.path, relative, [RECORD])

    def _fetch(self, asset: str, partition: str, fp: str, record: dict[str, Any]) -> Artifact | None:
        """Download the remote artifact the record names into the cache (replacing a local copy with
        other content), checked file by file; None if the remote copy is damaged."""
        relative = self._relative(asset, partition) / fp
        parent = self.partition_dir(asset, partition)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=temp_prefix(fp)))
        try:
            try:
                self.remote.download(relative / record["content_hash"], sorted(record["files"]), tmp)
                intact = content_hash(tmp) == (record["content_hash"], record["files"])
            except FileNotFoundError:
                intact = False
            if not intact:
                logger.warning("%s/%s does not match its record; it will be rebuilt", self.remote.url, relative)
                shutil.rmtree(tmp, ignore_errors=True)
                return None
            (tmp / RECORD).write_bytes(json.dumps(record, sort_keys=True, indent=2).encode())
            retire(parent / fp)
            commit(tmp, parent / fp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._local(asset, partition, fp)


def damage(artifact: Artifact) -> str | None:
    """Cheap check of a finished output: every recorded file present, at its recorded size (records
    written before sizes were recorded: presence only). None when it looks intact."""
    sizes = artifact.record.get("sizes", {})
    for name in sorted(artifact.record["files"]):
        path = artifact.path / name
        if not path.is_file():
            return f"{name} is missing"
        if name in sizes and path.stat().st_size != sizes[name]:
            return f"{name}: {path.stat().st_size} bytes, recorded {sizes[name]}"
    return None


def content_damage(artifact: Artifact) -> str | None:
    """Full check: every recorded file's sha256 as recorded, and no file beside them."""
    _digest, hashes = content_hash(artifact.path)
    recorded = artifact.record["files"]
    changed = sorted(name for name in recorded if hashes.get(name) != recorded[name])
    extra = sorted(set(hashes) - set(recorded))
    if changed:
        return f"{', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from its record"
    if extra:
        return f"{', '.join(extra)} not in its record"
    return None


def commit(tmp: Path, final: Path) -> None:
    """fsync a finished temporary folder and rename it to `final`: it appears complete or not at all."""
    fsync_tree(tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        # Another run finished the same fingerprint first; its output is equivalent.
        if not (final / RECORD).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(final.parent)


def retire(folder: Path) -> None:
    """Move a local copy out of the way (renamed first, so nobody sees it half deleted), then delete it."""
    if folder.exists():
        aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=temp_prefix(f"retired-{folder.name}")))
        os.rename(folder, aside / folder.name)
        shutil.rmtree(aside, ignore_errors=True)
