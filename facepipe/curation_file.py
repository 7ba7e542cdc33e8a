"""A user's word on the face set: `curation.toml` in the partition folder.

Curation (facepipe.curation) drops faces on its own; this file overrides it, face by face,
without touching the media. Faces are named by their frame, the same names user masks use
(facepipe.labels.frame_stem): `photo` for a still `photo.jpg`, `clip_000012` for frame 12
(0-based) of `clip.mp4`, `takes/clip_000003` for a video in a subfolder. A range names every
face of one video between two frames, both included: `clip_000100..clip_000180`.

    # data/targets/interview/curation.toml
    keep = ["interview_000012"]                       # keep, whatever curation says
    drop = ["interview_000200..interview_000260"]     # drop, whatever curation says

Both lists are optional. A name in both lists, a key other than keep/drop, a value that is not
a list of strings or a range across two videos is an error that names the file. A name that
matches no face (a frame not sampled, or with no face found) is not an error: it is reported
and left alone, since which frames are sampled depends on `frames.max_frames`.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

CURATION_FILE = "curation.toml"  # in data/<identities|targets>/<key>/; media scanning skips it
LISTS = ("keep", "drop")
RANGE = re.compile(r"(?P<base>.+)_(?P<first>\d+)\.\.(?P=base)_(?P<last>\d+)")
HOW_TO = ('write keep = ["<frame>", ...] and/or drop = ["<frame>", "<video>_<first>..<video>_<last>", ...] '
          "with frame names as shown on the dropped-faces sheet (see data/README.md)")


class CurationFileError(ValueError):
    """curation.toml cannot be used; the message names the file and says what to write."""


@dataclass(frozen=True)
class Overrides:
    keep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keep or self.drop)


def curation_path(folder: Path) -> Path:
    return Path(folder) / CURATION_FILE


def overrides_digest(folder: Path) -> str:
    """sha256 of the file's bytes ("none" without a file): the curation's input version, so
    editing the file rebuilds the curated faces and what trains on them, nothing before."""
    path = curation_path(folder)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "none"


def read_overrides(folder: Path) -> Overrides:
    """The keep/drop lists of `folder/curation.toml` (empty without a file)."""
    path = curation_path(folder)
    if not path.is_file():
        return Overrides()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise CurationFileError(f"{path}: not valid TOML ({error}); {HOW_TO}") from error
    unknown = sorted(set(document) - set(LISTS))
    if unknown:
        raise CurationFileError(f"{path}: unknown key(s) {', '.join(unknown)}; {HOW_TO}")
    lists = {}
    for name in LISTS:
        entries = document.get(name, [])
        if not isinstance(entries, list) or not all(isinstance(entry, str) and entry.strip() for entry in entries):
            raise CurationFileError(f"{path}: {name} must be a list of frame names (strings); {HOW_TO}")
        for entry in entries:
            if ".." in entry and not RANGE.fullmatch(entry.strip()):
                raise CurationFileError(f"{path}: {entry!r} is not a range of one video's frames "
                                        "(write <video>_<first>..<video>_<last>, e.g. clip_000100..clip_000180)")
        lists[name] = tuple(entry.strip() for entry in entries)
    both = sorted(set(lists["keep"]) & set(lists["drop"]))
    if both:
        raise CurationFileError(f"{path}: {', '.join(both)} listed under both keep and drop; keep it in one list")
    return Overrides(**lists)


def matching(entry: str, stems: list[str]) -> list[int]:
    """Positions in `stems` (the faces' frame names) that a keep/drop entry names."""
    found = RANGE.fullmatch(entry)
    if found is None:
        return [i for i, stem in enumerate(stems) if stem == entry]
    base, first, last = found["base"], int(found["first"]), int(found["last"])
    prefix = f"{base}_"
    return [i for i, stem in enumerate(stems) if stem.startswith(prefix) and stem[len(prefix):].isdigit()
            and first <= int(stem[len(prefix):]) <= last]


def resolve(overrides: Overrides, stems: list[str]) -> tuple[set[int], set[int], list[str]]:
    """(faces to keep, faces to drop, entries that matched no face) for faces named `stems`.
    A face that both lists reach (through a range) is kept: keeping is the user's last word."""
    keep, drop, unmatched = set(), set(), []
    for name, chosen in (("drop", drop), ("keep", keep)):
        for entry in getattr(overrides, name):
            rows = matching(entry, stems)
            if not rows:
                unmatched.append(entry)
            chosen.update(rows)
    return keep, drop - keep, unmatched
