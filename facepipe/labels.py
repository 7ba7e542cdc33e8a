"""XSeg training labels: user masks where the user drew one, landmark hulls everywhere else.

User masks live in ``data/targets/<key>/masks/`` as PNG files named after the frame they label,
with white (> 127) = visible face and black = everything else, including whatever covers the
face. They are drawn on the *original frame*, at its full size; facepipe warps each one into the
aligned crop with the same transform as the image.

Frame names (the "frame stem"; the mask is ``masks/<frame stem>.png``):
- a still ``photo.png`` (or ``photo.jpg``) -> ``photo``, so its mask is ``masks/photo.png``;
- frame 12 of a video ``clip.mp4`` -> ``clip_000012`` (the 0-based frame index in decoding
  order, 6 digits), so its mask is ``masks/clip_000012.png``;
- media in a subfolder keep the subfolder: ``stills/a.png`` -> ``masks/stills/a.png``,
  ``takes/clip.mp4`` frame 3 -> ``masks/takes/clip_000003.png``.
Only frames that were sampled and had a face detected can be labelled (they are the faces
XSeg trains on); a mask naming any other frame, a mask whose size differs from its frame, or a
name that fits two media files (``a.jpg`` and ``a.png`` side by side) is an error that names the
file and says what was expected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pandas as pd

from facepipe.align import warp_to_crop

MASKS_FOLDER = "masks"  # inside a target folder; media scanning skips it (media.RESERVED_NAMES)
MASK_SUFFIX = ".png"
FRAME_INDEX_DIGITS = 6
MATRIX_COLUMNS = [f"m{i}" for i in range(6)]
INDEX_COLUMNS = ["face_id", "source", "kind", "source_frame_index", *MATRIX_COLUMNS]
NAMES_SHOWN_IN_ERRORS = 12


class UserMaskError(ValueError):
    """A file in the masks folder that cannot be used as a label; the message says why and what to do."""


def frame_stem(source: str, kind: str, source_frame_index: int) -> str:
    """The name (without ``.png``) a user mask for this frame must have; see the module docstring."""
    base = PurePosixPath(source).with_suffix("").as_posix()
    if kind == "image":
        return base
    if kind == "video":
        return f"{base}_{int(source_frame_index):0{FRAME_INDEX_DIGITS}d}"
    raise ValueError(f"unknown media kind {kind!r} for {source}: expected 'image' or 'video'")


def user_mask_files(masks_dir: Path) -> list[tuple[str, Path]]:
    """(frame stem, path) of every user mask under `masks_dir`, sorted by stem.

    Hidden files are ignored; any other file that is not a PNG is an error (a mask saved as
    JPEG would otherwise be silently skipped, and JPEG blurs mask edges anyway).
    """
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        return []
    found = []
    for path in masks_dir.rglob("*"):
        rel = path.relative_to(masks_dir)
        if path.is_dir() or any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() != MASK_SUFFIX:
            raise UserMaskError(
                f"{path}: user masks must be PNG files named <frame stem>.png (white = face); "
                "convert it to PNG or move it out of the masks folder"
            )
        found.append((rel.with_suffix("").as_posix(), path))
    return sorted(found)


def user_masks_digest(masks_dir: Path) -> str:
    """sha256 over the masks' names and contents: changes when a mask is added, removed or edited.
    Put it in the XSeg fingerprint so that a new mask retrains that target's model."""
    listing = []
    for stem, path in user_mask_files(masks_dir):
        listing.append(f"{stem}\t{hashlib.sha256(path.read_bytes()).hexdigest()}")
    return hashlib.sha256("\n".join(listing).encode("utf-8")).hexdigest()


def read_user_mask(path: Path, frame_size: tuple[int, int], frame_description: str) -> np.ndarray:
    """uint8 {0, 255} mask of the frame's size from a PNG (any bit depth or colour; white = face)."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise UserMaskError(f"{path}: cannot be read as an image; re-save it as a PNG")
    width, height = frame_size
    if image.shape != (height, width):
        raise UserMaskError(
            f"{path}: mask is {image.shape[1]}x{image.shape[0]} but {frame_description} is {width}x{height} "
            "(width x height); draw the mask on the full original frame at its own size"
        )
    return np.where(image > 127, 255, 0).astype(np.uint8)


def _expected_names(stems: list[str]) -> str:
    names = [f"{stem}{MASK_SUFFIX}" for stem in sorted(set(stems))]
    shown = ", ".join(names[:NAMES_SHOWN_IN_ERRORS])
    more = f", ... ({len(names)} in all)" if len(names) > NAMES_SHOWN_IN_ERRORS else ""
    return shown + more


@dataclass
class UserLabelReport:
    """Which faces got user labels: face ids, and the faces each mask file labelled."""

    face_ids: list[int] = field(default_factory=list)
    files: dict[str, list[int]] = field(default_factory=dict)  # mask path relative to masks/ -> face ids
    not_used: list[str] = field(default_factory=list)  # masks of faces that curation dropped

    @property
    def count(self) -> int:
        return len(self.face_ids)

    def as_metadata(self) -> dict:
        return {"user_labelled_faces": self.count, "user_mask_files": len(self.files), "files": self.files,
                "masks_of_dropped_faces": self.not_used}


def build_labels(
    index: pd.DataFrame,
    hull_masks: np.ndarray,
    masks_dir: Path,
    frame_sizes: Mapping[str, tuple[int, int]],
    dropped_frames: Collection[str] = (),
) -> tuple[np.ndarray, UserLabelReport]:
    """Training labels uint8 {0, 255} [N, S, S]: each face's user mask if its frame has one,
    else its landmark-hull mask. Rows follow `index` (one row per face, in hull_masks order).

    `index` needs the columns face_id, source, kind, source_frame_index and m0..m5 (the 2x3
    matrix taking frame pixels to crop pixels). `frame_sizes` maps each source to its frame
    (width, height). A mask is warped with facepipe.align.warp_to_crop (nearest neighbour,
    outside the frame = not face), the same transform as the face image. A frame with several
    faces gives each of them the mask through its own matrix. A mask of a frame in
    `dropped_frames` (names of faces that curation left out of the set) is listed in the report
    as not used rather than refused: the face exists, it is just not trained on.
    """
    masks_dir = Path(masks_dir)
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"face index lacks columns {missing}; expected {INDEX_COLUMNS}")
    hull_masks = np.asarray(hull_masks)
    if hull_masks.ndim != 3 or len(hull_masks) != len(index):
        raise ValueError(f"hull masks {hull_masks.shape} do not match the index's {len(index)} faces")
    size = hull_masks.shape[1]
    labels = np.where(hull_masks > 0, 255, 0).astype(np.uint8)
    report = UserLabelReport()

    rows_by_stem: dict[str, list[int]] = {}
    frame_by_stem: dict[str, set[tuple[str, int]]] = {}
    for row, (source, kind, frame_index) in enumerate(zip(index.source, index.kind, index.source_frame_index)):
        stem = frame_stem(source, kind, frame_index)
        rows_by_stem.setdefault(stem, []).append(row)
        frame_by_stem.setdefault(stem, set()).add((source, int(frame_index)))

    for stem, path in user_mask_files(masks_dir):
        rows = rows_by_stem.get(stem)
        if rows is None and stem in dropped_frames:
            report.not_used.append(path.relative_to(masks_dir).as_posix())
            continue
        if rows is None:
            raise UserMaskError(
                f"{path}: names no frame with a face in this target's face set. Expected one of: "
                f"{_expected_names(list(rows_by_stem))}. Stills are named <file stem>.png, video frames "
                f"<video stem>_<frame index, {FRAME_INDEX_DIGITS} digits>.png (0-based, decoding order)."
            )
        frames = sorted(frame_by_stem[stem])
        if len(frames) > 1:
            described = ", ".join(f"{source} frame {i}" for source, i in frames)
            raise UserMaskError(
                f"{path}: the name fits more than one frame ({described}); rename one of those media files"
            )
        source, frame_index = frames[0]
        if source not in frame_sizes:
            raise KeyError(f"no frame size given for source {source!r} (needed for {path})")
        described = f"its frame ({source}" + (f" frame {frame_index})" if index.kind.iat[rows[0]] == "video" else ")")
        mask = read_user_mask(path, tuple(frame_sizes[source]), described)
        for row in rows:
            matrix = index[MATRIX_COLUMNS].iloc[row].to_numpy(dtype=np.float64).reshape(2, 3)
            labels[row] = warp_to_crop(mask, matrix, size, nearest=True)
        face_ids = [int(index.face_id.iat[row]) for row in rows]
        report.face_ids.extend(face_ids)
        report.files[path.relative_to(masks_dir).as_posix()] = face_ids
    report.face_ids.sort()
    return labels, report
