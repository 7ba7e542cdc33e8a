"""The aligned face set: crops, hull masks and crop-space landmarks as memory-mappable arrays.

Training reads these arrays through np.load(mmap_mode="r"): no per-epoch decoding or detection.
Crops are BGR uint8 (OpenCV order, the same order the exported swap model takes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import pandas as pd

from facepipe.align import alignment_matrix, decode_reduction, face_crop, five_points, hull_mask
from facepipe.disk import require_free_space, reserve_blocks
from facepipe.pipelining import map_ordered

CROPS = "faces.npy"
MASKS = "masks.npy"
LANDMARKS = "landmarks.npy"
INDEX = "index.parquet"


@dataclass(frozen=True)
class FaceSet:
    crops: np.ndarray  # [N, S, S, 3] uint8 BGR
    masks: np.ndarray  # [N, S, S] uint8 {0, 255} landmark-hull masks
    landmarks: np.ndarray  # [N, 478, 2] float32 crop pixels
    index: pd.DataFrame  # one row per face: frame_id, source, source_frame_index, timestamp_s, score, matrix

    @classmethod
    def load(cls, folder: Path) -> "FaceSet":
        return cls(
            np.load(folder / CROPS, mmap_mode="r"),
            np.load(folder / MASKS, mmap_mode="r"),
            np.load(folder / LANDMARKS, mmap_mode="r"),
            pd.read_parquet(folder / INDEX),
        )

    def __len__(self) -> int:
        return len(self.index)


def build_face_set(
    frames: Iterable[tuple[int, Callable[..., np.ndarray], np.ndarray]],
    count: int,
    size: int,
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Align `count` faces given as (frame_id, `load`, [478,3] landmarks) into arrays on disk;
    `load(reduction=r)` returns the BGR frame decoded at 1/r of its size (r: 1, 2, 4 or 8).

    Each frame is decoded at the largest reduction its crop allows (align.decode_reduction): a
    1080p face shrinks 2-3x into a 256 px crop, and a half-size JPEG decode costs a fraction of a
    full one. Two threads load and align the frames (decoding and warping release the GIL), this
    one writes the results in order. Arrays are written through memory maps so memory stays flat
    for large sets. Returns (frame ids, 2x3 alignment matrices) in face order.
    """
    shapes = {CROPS: ((count, size, size, 3), np.uint8), MASKS: ((count, size, size), np.uint8),
              LANDMARKS: ((count, 478, 2), np.float32)}
    # A memory map on a full disk dies with SIGBUS at the first page that has no block: check the
    # space first, then reserve every block before writing through the maps.
    require_free_space(out_dir, sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values()))
    arrays = [np.lib.format.open_memmap(out_dir / name, mode="w+", dtype=dtype, shape=shape)
              for name, (shape, dtype) in shapes.items()]
    for name in shapes:
        reserve_blocks(out_dir / name)
    crops, masks, marks = arrays
    frame_ids = np.zeros(count, dtype=np.int64)
    matrices = np.zeros((count, 2, 3), dtype=np.float64)
    def aligned(item: tuple[int, Callable[..., np.ndarray], np.ndarray]) -> tuple[int, tuple]:
        frame_id, load, landmarks = item
        matrix = alignment_matrix(five_points(landmarks), size)
        reduction = decode_reduction(matrix)
        return frame_id, face_crop(load(reduction=reduction), landmarks, matrix, size, reduction)

    for i, (frame_id, face) in enumerate(map_ordered(aligned, frames, workers=2)):
        crops[i], masks[i], marks[i], matrices[i] = face
        frame_ids[i] = frame_id
        if progress and ((i + 1) % 50 == 0 or i + 1 == count):
            progress(i + 1, count)
    for array in (crops, masks, marks):
        array.flush()
    del crops, masks, marks
    return frame_ids, matrices


def write_subset(face_set: FaceSet, rows: np.ndarray, out_dir: Path) -> None:
    """The faces at `rows` written as a face set of their own (same files, same format, so every
    reader of a face set reads it); `face_id` is renumbered to the new positions."""
    rows = np.asarray(rows, dtype=np.int64)
    for name, array in ((CROPS, face_set.crops), (MASKS, face_set.masks), (LANDMARKS, face_set.landmarks)):
        subset = np.lib.format.open_memmap(out_dir / name, mode="w+", dtype=array.dtype, shape=(len(rows), *array.shape[1:]))
        for i, row in enumerate(rows):  # one face at a time: memory stays flat for large sets
            subset[i] = array[row]
        subset.flush()
        del subset
    index = face_set.index.iloc[rows].reset_index(drop=True)
    index["face_id"] = np.arange(len(rows), dtype=index["face_id"].dtype)
    index.to_parquet(out_dir / INDEX, index=False)


# The regions a viewer reads expression from (MediaPipe FaceMesh indices, FACE_LANDMARKS_LEFT_EYE /
# RIGHT_EYE / LIPS): each eye's contour and the outer and inner lips.
EYE_CONTOURS = ((33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
                (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466))
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
FEATURE_MARGIN = 0.04  # hulls grown by this share of the crop: lids, lashes and lip edges included


def feature_masks(landmarks: np.ndarray, crop_size: int, size: int) -> np.ndarray:
    """uint8 {0, 255} masks [N, size, size] of the eyes and mouth (each region's convex hull, grown by
    FEATURE_MARGIN) from crop-space landmarks [N, 478, 2] of crops ``crop_size`` px wide: what the
    eyes-and-mouth priority of the training loss weighs (DeepFaceLab's eyes_mouth_prio)."""
    scale = size / crop_size
    margin = max(1, round(FEATURE_MARGIN * size))
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2)
    out = np.zeros((len(landmarks), size, size), dtype=np.uint8)
    for i, points in enumerate(np.asarray(landmarks, dtype=np.float64) * scale):
        regions = [hull_mask(points[list(region)], size) for region in (*EYE_CONTOURS, LIPS)]
        out[i] = cv2.dilate(np.maximum.reduce(regions), grow)
    return out


# The central face of a dfl_whole_face crop (x0, x1, y0, y1 as fractions of the crop): eyes,
# nose and mouth, no hair, background or mask border (the template's eyes sit at x 0.35/0.63,
# y 0.39, the mouth at y 0.69). Where the swap metrics measure a face, and its skin tone is taken.
CENTRAL_FACE = (0.3, 0.7, 0.3, 0.78)


def central_face(crop: np.ndarray) -> np.ndarray:
    """The ``CENTRAL_FACE`` region of a square crop [S, S(, C)], as a view (writable)."""
    size = crop.shape[0]
    x0, x1, y0, y1 = (int(round(f * size)) for f in CENTRAL_FACE)
    return crop[y0:y1, x0:x1]


def holdout_split(count: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: every `every`-th face is held out, spread over the whole set."""
    held = np.arange(every // 2, count, every) if every > 0 and count >= 2 * every else np.array([], dtype=np.int64)
    return np.setdiff1d(np.arange(count), held), held


def resize_crops(images: np.ndarray, size: int, interpolation: str = "fit") -> np.ndarray:
    """Square uint8 crops [N, H, H, 3] or masks [N, H, H] resized to ``size``: the one resizer of
    face crops. ``interpolation``: "fit", INTER_AREA when shrinking (the right filter for it) and
    INTER_CUBIC when enlarging; "nearest", for labels that must stay {0, 255}; "linear", as
    FaceFusion and DeepFaceLive cut a face (cv2.warpAffine's bilinear filter, no anti-aliasing).
    One image at a time, because the input may be a memory map larger than RAM; an input already
    at ``size`` comes back as it is."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise ValueError(f"resize_crops expects square uint8 crops [N, S, S(, 3)], got {images.dtype} {list(images.shape)}")
    if images.shape[1] == size:
        return images
    if interpolation == "fit":
        flag = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_CUBIC
    else:
        flag = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR}[interpolation]
    out = np.empty((len(images), size, size, *images.shape[3:]), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=flag)
    return out
