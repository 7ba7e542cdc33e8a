"""Face-set curation: which aligned faces are worth training on, and why the others are not.

DeepFaceLab users sort a face set by hand before training: they delete faces of other people,
faces too small, too dark or too blurred to teach anything, and runs of the same image. This
does it on the face set's arrays and the faces' embeddings. Every face gets the list of reasons
that apply to it, checked in this order, and is dropped for the first:

- `user`: named under `drop` in the partition's curation.toml (facepipe.curation_file);
- `small`: the face is smaller than `min_face_px` pixels in its source frame (the larger side
  of its landmark box): upscaled, it is mostly interpolation;
- `dark`: the mean brightness of the face (its landmark hull) is below `min_brightness` grey levels;
- `blurry`: sharpness (variance of the Laplacian over the face, at a fixed analysis size) is
  below `blur_ratio` times the set's median: relative, since what is sharp depends on the
  camera and the compression, and the outliers of one set are what hurts;
- `other_person`: farther from the partition's main person than the embedder's same-person
  threshold. For an identity the main person is what the identity profile keeps
  (facepipe.profile.reject_outliers, the one outlier rule); a target may show several people
  (an audience, an interviewer), so its main person is the largest cluster of the embeddings,
  refined by the same rule;
- `duplicate`: the same image as an earlier kept face (a frozen or repeated frame, the same
  photo twice): mean absolute difference of 32 px grey thumbnails below `duplicate_grey_levels`.
  Deliberately tight: consecutive frames of a real talking-head video at 25-30 fps differ by as
  little as 0.13 grey levels there, less than a JPEG re-save of one frame (0.35), so anything
  looser would thin out normal footage (measured on six talking-head videos).

A face named under `keep` in curation.toml is kept whatever applies to it. Quality reasons are
judged before identity and duplicates, so that the main person's centre is measured on usable
faces and a duplicate group keeps its first usable face.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from facepipe.embed import embedding_distance
from facepipe.profile import embedding_centre, laplacian_variance, pose_proxies, reject_outliers

REASONS = ("user", "small", "dark", "blurry", "other_person", "duplicate")
ANALYSIS_SIZE = 128  # sharpness is measured on the crop at this size: near what training sees
THUMB_SIZE = 32  # duplicate test thumbnails


@dataclass(frozen=True)
class Thresholds:
    min_face_px: float = 64.0
    min_brightness: float = 40.0
    blur_ratio: float = 0.25
    duplicate_grey_levels: float = 0.05


@dataclass
class Curation:
    kept: np.ndarray  # [N] bool
    reasons: list[list[str]]  # per face, every reason that applies (in REASONS order)
    measures: dict[str, np.ndarray]  # per face: face_px, brightness, sharpness, yaw/pitch proxies, identity_distance
    kept_by_user: list[int] = field(default_factory=list)  # faces kept by curation.toml despite a reason
    identity_cutoff: float = 0.0

    def dropped_reason(self, i: int) -> str | None:
        """The reason face `i` was dropped for (its first), or None if kept."""
        return None if self.kept[i] else self.reasons[i][0]

    def counts(self) -> dict[str, int]:
        """Dropped faces per reason (the first reason of each), every reason listed."""
        counts = dict.fromkeys(REASONS, 0)
        for i in np.flatnonzero(~self.kept):
            counts[self.reasons[i][0]] += 1
        return counts


def face_size_px(crop_landmarks: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """[N] size of each face in its source frame: the larger side of the landmark box, in
    source pixels. `matrices` [N, 2, 3] take frame pixels to crop pixels (a similarity), so
    the crop-space box divided by the matrix's scale is the box in the frame."""
    points = np.asarray(crop_landmarks, dtype=np.float64)[..., :2]
    box = points.max(axis=1) - points.min(axis=1)
    matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3)
    scale = np.sqrt(np.abs(np.linalg.det(matrices[:, :, :2])))
    return box.max(axis=1) / np.maximum(scale, 1e-12)


def face_brightness(crops_bgr: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[N] mean grey level (0-255) of each face inside its hull mask (whole crop without one)."""
    values = np.empty(len(crops_bgr))
    for i, crop in enumerate(crops_bgr):
        grey = cv2.cvtColor(np.asarray(crop), cv2.COLOR_BGR2GRAY)
        inside = np.asarray(masks[i]) > 127
        values[i] = grey[inside].mean() if inside.any() else grey.mean()
    return values


def face_sharpness(crops_bgr: np.ndarray, masks: np.ndarray, size: int = ANALYSIS_SIZE) -> np.ndarray:
    """[N] variance of the Laplacian over the face (facepipe.profile.laplacian_variance) with the
    crop and mask resized to `size`: sensor noise and the stored crop size count less, what a
    model at training resolution can learn from counts more."""
    values = np.empty(len(crops_bgr))
    for i, crop in enumerate(crops_bgr):
        small = cv2.resize(np.asarray(crop), (size, size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(np.asarray(masks[i]), (size, size), interpolation=cv2.INTER_NEAREST)
        values[i] = laplacian_variance(small, cv2.erode(mask, np.ones((5, 5), np.uint8)))
    return values


def thumbnails(crops_bgr: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """[N, size*size] float32 grey thumbnails for the duplicate test."""
    return np.stack([
        cv2.resize(cv2.cvtColor(np.asarray(crop), cv2.COLOR_BGR2GRAY), (size, size), interpolation=cv2.INTER_AREA)
        for crop in crops_bgr
    ]).reshape(len(crops_bgr), -1).astype(np.float32)


def duplicates(thumbs: np.ndarray, candidates: np.ndarray, grey_levels: float) -> np.ndarray:
    """[N] bool: candidates whose thumbnail is within `grey_levels` (mean absolute difference)
    of an earlier candidate that is not itself a duplicate. Greedy in face order, so the first
    face of a run of identical frames is the one kept."""
    flagged = np.zeros(len(thumbs), dtype=bool)
    kept: list[int] = []
    for i in np.flatnonzero(candidates):
        if kept and np.abs(thumbs[kept] - thumbs[i]).mean(axis=1).min() < grey_levels:
            flagged[i] = True
        else:
            kept.append(i)
    return flagged


def largest_cluster(embeddings: np.ndarray, metric: str, cutoff: float) -> np.ndarray:
    """Indices of the largest group of faces when they are clustered by average linkage with the
    same-person `cutoff` (ties: the group holding the earliest face)."""
    if len(embeddings) == 1:
        return np.array([0])
    distances = embedding_distance(embeddings, embeddings, metric)
    distances = (distances + distances.T) / 2
    np.fill_diagonal(distances, 0.0)
    labels = fcluster(linkage(squareform(np.maximum(distances, 0.0), checks=False), method="average"),
                      t=cutoff, criterion="distance")
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    best = ids[np.lexsort((first, -counts))[0]]
    return np.flatnonzero(labels == best)


def main_person_distances(embeddings: np.ndarray, usable: np.ndarray, metric: str, cutoff: float,
                          role: str) -> np.ndarray:
    """[N] distance of every face to the partition's main person, measured on the `usable` faces
    (all faces when none is usable): the identity profile's outlier rule, which for a target
    starts from the largest cluster instead of the medoid."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    basis = np.flatnonzero(usable) if usable.any() else np.arange(len(embeddings))
    start = None
    if role == "target":
        start = embedding_centre(embeddings[basis][largest_cluster(embeddings[basis], metric, cutoff)], metric)
    rejection = reject_outliers(embeddings[basis], metric, cutoff, start=start)
    return embedding_distance(embeddings, rejection.centre, metric)


def curate(
    crops_bgr: np.ndarray,
    masks: np.ndarray,
    crop_landmarks: np.ndarray,
    matrices: np.ndarray,
    embeddings: np.ndarray,
    metric: str,
    cutoff: float,
    role: str,
    thresholds: Thresholds = Thresholds(),
    user_keep: set[int] = frozenset(),
    user_drop: set[int] = frozenset(),
) -> Curation:
    """Decide every face of a set (see the module docstring). Deterministic: plain arithmetic
    in face order, no randomness."""
    count = len(crops_bgr)
    measures = {
        "face_px": face_size_px(crop_landmarks, matrices),
        "brightness": face_brightness(crops_bgr, masks),
        "sharpness": face_sharpness(crops_bgr, masks),
        # recorded, not acted on: how lopsided the poses are (facepipe.profile.pose_proxies)
        **dict(zip(("yaw_proxy", "pitch_proxy"), pose_proxies(crop_landmarks).T)),
    }
    flags = {reason: np.zeros(count, dtype=bool) for reason in REASONS}
    flags["user"][sorted(user_drop)] = True
    flags["small"] = measures["face_px"] < thresholds.min_face_px
    flags["dark"] = measures["brightness"] < thresholds.min_brightness
    judged = ~(flags["small"] | flags["dark"])  # the set's sharpness is what its usable faces have
    reference = float(np.median(measures["sharpness"][judged if judged.any() else slice(None)]))
    flags["blurry"] = measures["sharpness"] < thresholds.blur_ratio * reference
    usable = ~(flags["user"] | flags["small"] | flags["dark"] | flags["blurry"])
    measures["identity_distance"] = main_person_distances(embeddings, usable, metric, cutoff, role)
    flags["other_person"] = measures["identity_distance"] > cutoff
    forced = np.zeros(count, dtype=bool)
    forced[sorted(user_keep)] = True
    candidates = (usable & ~flags["other_person"]) | forced
    flags["duplicate"] = duplicates(thumbnails(crops_bgr), candidates, thresholds.duplicate_grey_levels)
    reasons = [[reason for reason in REASONS if flags[reason][i]] for i in range(count)]
    kept = np.array([forced[i] or not reasons[i] for i in range(count)], dtype=bool)
    return Curation(kept, reasons, measures, sorted(int(i) for i in np.flatnonzero(forced) if reasons[i]), float(cutoff))
