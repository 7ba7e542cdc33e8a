"""Disks that refuse writes: full, read-only or not ours. Each is said in one line naming the
place (the store, the models folder) and what to do; none of them is worth retrying.
"""

from __future__ import annotations

import errno
import re
import os
import shutil
from pathlib import Path

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
REFUSED = {errno.EROFS, errno.EACCES, errno.EPERM}
MB = 1 << 20
# Kept free beyond what a write needs: the record, the fsync'd folder entries, the file system's own blocks.
SPARE_BYTES = 1 * MB


class NoSpace(OSError):
    """Not enough free space for a write of known size; raised before writing anything."""

    def __init__(self, folder: Path, needed: int, free: int):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
        self.needed, self.free = needed, free


def megabytes(count: int) -> str:
    return f"{count / MB:.0f} MB" if count >= 10 * MB else f"{count / MB:.1f} MB"


def nearest_existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(nearest_existing(path)).free


def require_free_space(folder: Path, needed: int) -> None:
    """Raise NoSpace unless `needed` bytes (plus a small spare) fit under `folder`: for writes
    that would otherwise fail midway, or worse (a memory map on a full disk dies with SIGBUS)."""
    free = free_bytes(folder)
    if free < needed + SPARE_BYTES:
        raise NoSpace(folder, needed + SPARE_BYTES, free)


def reserve_blocks(path: Path) -> None:
    """Allocate every block of a (sparse) file now, so that writing into it later cannot run out
    of space; NoSpace if the disk cannot hold it."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        raise NoSpace(Path(path).parent, size, free_bytes(path)) from error
    finally:
        os.close(fd)


# numpy's np.save / tofile on a full disk: an OSError with no errno, only "<n> requested and <m> written".
SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def storage_error(error: BaseException) -> OSError | None:
    """The OSError behind `error` (itself or a cause) that says a disk is full or refuses writes."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE | REFUSED:
            return error
        if isinstance(error, OSError) and error.errno is None and SHORT_WRITE.match(str(error)):
            return OSError(errno.ENOSPC, f"No space left on device ({error})")
        error = error.__cause__ or error.__context__
    return None


def describe(error: OSError, places: dict[str, tuple[Path, str]]) -> str:
    """One line for a full or refusing disk. `places`: name -> (root, environment variable that
    moves it), e.g. {"store": (Path("store"), "FACEPIPE_STORE")}; the error's file names the place."""
    path = Path(error.filename) if error.filename else None
    name, root, variable = next(((name, root, variable) for name, (root, variable) in places.items()
                                 if path is not None and is_under(path, root)), (None, None, None))
    if path is None and places:  # a write that names no file (numpy's short write): steps write into the first place
        name, (root, variable) = next(iter(places.items()))
    where = f"the {name} at {root}" if name else f"the disk holding {path.parent if path else 'a file'}"
    if error.errno in NO_SPACE:
        needed = getattr(error, "needed", None)
        free = getattr(error, "free", None)
        if free is None and (path is not None or root is not None):
            free = free_bytes(path.parent if path is not None else root)
        amounts = (f"{megabytes(needed)} needed, " if needed is not None else "") + (
            f"{megabytes(free)} free" if free is not None else "")
        return (f"{where} is full ({amounts}): free some space"
                + (f" or set {variable} to a larger disk" if variable else "") + ", then run again")
    move = f" or set {variable} to a writable folder" if variable else ""
    return (f"cannot write in {where}: {error.strerror} ({path}). Cache hits work without writing; "
            f"to build, make it writable{move}")


def is_under(path: Path, root: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))
    except (TypeError, ValueError):
        return False
