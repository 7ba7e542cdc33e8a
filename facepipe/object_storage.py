"""The remote half of the artifact store: a folder tree under an fsspec URL (s3://, gs://, az://, ...).

Object stores have no rename, so the store never relies on one here (see ArtifactStore): files
go under their content hash and the record that names them is uploaded last. The local cache
stays the only place anything is built or read from (numpy memory-maps local files).

Credentials and endpoints come from the usual places of each backend (AWS_* variables, gcloud
login, ...) or from fsspec's own `FSSPEC_<PROTOCOL>_<OPTION>` variables, for example
`FSSPEC_S3_ENDPOINT_URL=http://minio:9000` for MinIO or another S3-compatible server.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from upath import UPath


def is_url(root: str | Path) -> bool:
    """True for a root that fsspec serves (`s3://bucket/store`), False for a local folder."""
    text = str(root)
    return "://" in text and not text.startswith("file://")


def local_path(root: str | Path) -> Path:
    """A local root as a Path; `file:///srv/store` is accepted as well as `/srv/store`."""
    text = str(root)
    return Path(UPath(text).path) if text.startswith("file://") else Path(text)


class RemoteTree:
    """Files under one URL prefix, addressed by relative POSIX paths."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.root = UPath(self.url)

    def _target(self, relative: PurePosixPath) -> UPath:
        return self.root.joinpath(*relative.parts)

    def read(self, relative: PurePosixPath) -> bytes | None:
        """The file's bytes, or None if it does not exist. A direct GET: listings may be cached."""
        target = self._target(relative)
        try:
            return target.fs.cat_file(target.path)
        except FileNotFoundError:
            return None

    def write(self, relative: PurePosixPath, data: bytes) -> None:
        """One PUT: readers see the old object or the new one, never a mix."""
        target = self._target(relative)
        target.fs.pipe_file(target.path, data)

    def upload(self, folder: Path, relative: PurePosixPath, names: list[str]) -> None:
        for name in names:
            target = self._target(relative / name)
            target.fs.put_file(str(folder / name), target.path)

    def download(self, relative: PurePosixPath, names: list[str], folder: Path) -> None:
        for name in names:
            target = self._target(relative / name)
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            target.fs.get_file(target.path, str(folder / name))

    def folders(self, relative: PurePosixPath) -> list[str]:
        """Names of the folders directly under `relative` (fresh listing, not a cached one)."""
        target = self._target(relative)
        target.fs.invalidate_cache(target.path)
        try:
            entries = target.fs.ls(target.path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(PurePosixPath(entry["name"]).name for entry in entries if entry["type"] == "directory")

    def remove(self, relative: PurePosixPath) -> None:
        target = self._target(relative)
        target.fs.rm(target.path, recursive=True)
