"""Quality of a swap on held-out target faces: identity transfer and attribute following,
always beside a paste-the-identity baseline (DESIGN.md, Models: Evaluation).

Identity distance alone is a trap: a model that paints the same identity face whatever the
input scores best on it. So every figure is reported for three sets of aligned crops:
- ``target``: the original target faces;
- ``swap``: the model's output for each of them;
- ``baseline``: one identity face (``mean_identity_face`` or ``most_frontal_face``) pasted for
  every target face — perfect identity, no following at all.
A swap is good when its identity distance to the profile is well below the target's (positive
identity-transfer gain) and its pose and mouth follow the target clearly better than the
baseline's do.

Attributes come from MediaPipe FaceMesh landmarks, detected the same way on every crop (static
mode, crop by crop), so target and swap are measured alike:
- head pose (yaw, pitch, roll in degrees) by ``cv2.solvePnP`` (SQPnP) of six landmarks against a
  generic 3D face (nose tip, chin, outer eye corners, mouth corners), pinhole camera with focal
  length = crop size and centre = crop centre. Angles are read off the rotated face axes:
  yaw > 0 turns the nose towards the image right, pitch > 0 towards the image bottom, roll > 0
  rotates the eye line counter-clockwise on screen (the conventions of facepipe.sample.HeadPose).
  The generic face gives a constant offset per person (frontal faces read a few degrees of
  pitch), which cancels when swap and target are compared. Aligned crops are levelled by the
  alignment, so roll stays near zero there.
- mouth opening: inner-lip gap (points 13-14) over face height (forehead 10 to chin 152).

Following is the mean absolute difference swap - target (degrees; mouth in face heights) and
the Pearson correlation over faces; a series that does not vary cannot follow, so its
correlation is defined as 0 (the baseline's always is). ``pose_mae_deg`` and ``pose_corr``
combine yaw and pitch (roll is reported on its own: see above). The absolute error also holds a
per-person offset (two faces in the same pose read slightly different angles off the generic
3D face), the correlation does not: read both. Only faces where landmarks were found in both
crops are compared; the detection rate is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from facepipe.align import template_points
from facepipe.embed import FaceEmbedder
from facepipe.landmarks import detect_landmarks
from facepipe.profile import distance_to_profile, round_floats

# MediaPipe FaceMesh indices and a generic 3D face for them (x right, y down, z away from the
# camera, nose tip at the origin; units arbitrary, ~0.1 mm): the six-point head model widely used
# for PnP head pose, with y and z flipped from its y-up, z-towards-camera form.
POSE_LANDMARKS = np.array([1, 152, 33, 263, 61, 291])  # nose tip, chin, eye outer corners (image left/right), mouth corners
POSE_MODEL_POINTS = np.array(
    [
        (0.0, 0.0, 0.0),
        (0.0, 330.0, 65.0),
        (-225.0, -170.0, 135.0),
        (225.0, -170.0, 135.0),
        (-150.0, 150.0, 125.0),
        (150.0, 150.0, 125.0),
    ],
    dtype=np.float64,
)
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
FOREHEAD_TOP, CHIN = 10, 152
POSE_NAMES = ("yaw", "pitch", "roll")


# ---------------------------------------------------------------------------------------------
# Attributes from landmarks


def _as_batch(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[1] != 478 or points.shape[2] < 2:
        raise ValueError(f"expected MediaPipe landmarks [N, 478, >=2] or [478, >=2], got {np.shape(landmarks)}")
    return points[..., :2]


def head_pose(landmarks: np.ndarray, image_size: int) -> np.ndarray:
    """[N, 3] (yaw, pitch, roll) in degrees from FaceMesh landmarks in pixels of a square image
    of ``image_size``; NaN rows where the landmarks are NaN (no face)."""
    points = _as_batch(landmarks)
    camera = np.array([[image_size, 0.0, image_size / 2], [0.0, image_size, image_size / 2], [0.0, 0.0, 1.0]])
    poses = np.full((len(points), 3), np.nan)
    for i, face in enumerate(points):
        image_points = face[POSE_LANDMARKS]
        if not np.isfinite(image_points).all():
            continue
        ok, rotation_vector, _ = cv2.solvePnP(POSE_MODEL_POINTS, image_points, camera, None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            continue
        rotation, _ = cv2.Rodrigues(rotation_vector)
        nose = rotation @ np.array([0.0, 0.0, -1.0])  # where the face looks (towards the camera when frontal)
        eye_line = rotation @ np.array([1.0, 0.0, 0.0])
        yaw = np.arctan2(nose[0], -nose[2])
        pitch = np.arctan2(nose[1], np.hypot(nose[0], nose[2]))
        roll = np.arctan2(-eye_line[1], eye_line[0])
        poses[i] = np.degrees([yaw, pitch, roll])
    return poses


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """[N] inner-lip gap over face height (0 closed, ~0.05-0.1 talking, more when wide open)."""
    points = _as_batch(landmarks)
    gap = np.linalg.norm(points[:, LOWER_INNER_LIP] - points[:, UPPER_INNER_LIP], axis=1)
    height = np.linalg.norm(points[:, CHIN] - points[:, FOREHEAD_TOP], axis=1)
    return gap / np.maximum(height, 1e-9)


def crop_landmarks(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FaceMesh on each crop on its own (static mode): landmarks [N, 478, 2] px (NaN where none)
    and detected [N]."""
    result = detect_landmarks([(np.ascontiguousarray(crop), None) for crop in crops])
    return result.points[..., :2].astype(np.float64), result.detected.copy()


# ---------------------------------------------------------------------------------------------
# Measuring a set of crops


@dataclass(frozen=True)
class FaceMeasures:
    """Per-face measurements of one set of aligned crops."""

    detected: np.ndarray  # [N] bool: FaceMesh found a face
    pose: np.ndarray  # [N, 3] yaw, pitch, roll in degrees (NaN where not detected)
    mouth: np.ndarray  # [N] mouth opening (NaN where not detected)
    embeddings: np.ndarray  # [N, D]
    distance_to_profile: np.ndarray  # [N]


def checked_crops(crops: np.ndarray) -> np.ndarray:
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[3] != 3 or crops.shape[1] != crops.shape[2] or crops.dtype != np.uint8:
        raise ValueError(f"expected aligned uint8 BGR crops [N, S, S, 3], got {crops.dtype} {list(crops.shape)}")
    return crops


def resize_crops(crops: np.ndarray, size: int) -> np.ndarray:
    crops = checked_crops(crops)
    if crops.shape[1] == size:
        return crops
    interpolation = cv2.INTER_AREA if crops.shape[1] > size else cv2.INTER_CUBIC
    return np.stack([cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interpolation) for crop in crops])


def measure_faces(crops: np.ndarray, profile: Mapping, embedder: FaceEmbedder) -> FaceMeasures:
    """Landmarks → pose and mouth, embeddings → distance to the profile, for aligned crops
    [N, S, S, 3] (the embedder gets the template's five points: the crops are aligned)."""
    crops = checked_crops(crops)
    size = crops.shape[1]
    landmarks, detected = crop_landmarks(crops)
    embeddings = embedder.embed(crops, np.repeat(template_points(size)[None], len(crops), axis=0))
    return FaceMeasures(
        detected=detected,
        pose=head_pose(landmarks, size),
        mouth=mouth_opening(landmarks),
        embeddings=embeddings,
        distance_to_profile=np.asarray(distance_to_profile(profile, embeddings), dtype=np.float64).reshape(-1),
    )


def repeated(measures: FaceMeasures, count: int) -> FaceMeasures:
    """One face's measures repeated for ``count`` faces (the pasted baseline)."""
    return FaceMeasures(
        detected=np.repeat(measures.detected, count),
        pose=np.repeat(measures.pose, count, axis=0),
        mouth=np.repeat(measures.mouth, count),
        embeddings=np.repeat(measures.embeddings, count, axis=0),
        distance_to_profile=np.repeat(measures.distance_to_profile, count),
    )


# ---------------------------------------------------------------------------------------------
# Baseline faces


def mean_identity_face(identity_crops: np.ndarray) -> np.ndarray:
    """The pixel mean of the identity's aligned crops [S, S, 3] uint8 — the "mean identity face"
    (sharp when the poses agree, ghosted when they vary a lot: then use most_frontal_face)."""
    crops = np.asarray(identity_crops)
    if crops.ndim != 4 or len(crops) == 0:
        raise ValueError(f"mean_identity_face needs aligned crops [N, S, S, 3], got {list(crops.shape)}")
    total = np.zeros(crops.shape[1:], dtype=np.float64)
    for crop in crops:  # one at a time: the crops may be a memory map
        total += crop
    return np.clip(np.rint(total / len(crops)), 0, 255).astype(np.uint8)


def most_frontal_face(identity_crops: np.ndarray, identity_landmarks: np.ndarray) -> np.ndarray:
    """The identity crop with the smallest |yaw| (FaceSet landmarks, crop pixels); ties: first."""
    crops = np.asarray(identity_crops)
    yaw = np.abs(head_pose(identity_landmarks, crops.shape[1])[:, 0])
    if not np.isfinite(yaw).any():
        raise ValueError("most_frontal_face: no identity face has usable landmarks")
    return np.array(crops[int(np.nanargmin(yaw))])


# ---------------------------------------------------------------------------------------------
# Comparison


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either series is constant (it cannot follow), NaN under 3 values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 1e-12 else 0.0


def attribute_following(candidate: FaceMeasures, target: FaceMeasures) -> dict[str, float]:
    """How well the candidate's pose and mouth follow the target's, over faces detected in both."""
    both = candidate.detected & target.detected
    target_detected = int(target.detected.sum())
    figures: dict[str, float] = {
        "faces_compared": int(both.sum()),
        "detection_rate": float(both.sum() / target_detected) if target_detected else float("nan"),
    }
    if not both.any():
        return {**figures, "pose_mae_deg": float("nan"), "pose_corr": float("nan"), "mouth_mae": float("nan")}
    pose_error = np.abs(candidate.pose[both] - target.pose[both])
    for axis, name in enumerate(POSE_NAMES):
        figures[f"{name}_mae_deg"] = float(pose_error[:, axis].mean())
        figures[f"{name}_corr"] = correlation(candidate.pose[both, axis], target.pose[both, axis])
    # Yaw and pitch only: alignment levels the eyes, so roll in a crop is near zero for every
    # face and says nothing about the model (it is still reported on its own).
    figures["pose_mae_deg"] = float(pose_error[:, :2].mean())
    figures["pose_corr"] = (figures["yaw_corr"] + figures["pitch_corr"]) / 2
    figures["mouth_mae"] = float(np.abs(candidate.mouth[both] - target.mouth[both]).mean())
    figures["mouth_corr"] = correlation(candidate.mouth[both], target.mouth[both])
    return figures


@dataclass(frozen=True)
class SwapEvaluation:
    target: FaceMeasures
    swap: FaceMeasures
    baseline: FaceMeasures  # the pasted face's measures, repeated per target face
    swap_to_target_distance: np.ndarray  # [N] embedding distance swap ↔ its target face
    distance_threshold: float  # the profile's same-person threshold

    def summary(self) -> dict:
        """JSON-ready figures (6 significant digits, undefined values as None)."""
        target_mean = float(self.target.distance_to_profile.mean())
        swap_mean = float(self.swap.distance_to_profile.mean())
        baseline_mean = float(self.baseline.distance_to_profile.mean())
        swap_following = attribute_following(self.swap, self.target)
        baseline_following = attribute_following(self.baseline, self.target)
        figures = {
            "faces": len(self.target.detected),
            "identity": {
                "target_distance_mean": target_mean,
                "swap_distance_mean": swap_mean,
                "baseline_distance_mean": baseline_mean,
                # > 0: the swap sits closer to the identity than the face it replaced.
                "identity_transfer_gain": target_mean - swap_mean,
                "swap_within_threshold": float((self.swap.distance_to_profile < self.distance_threshold).mean()),
                "swap_to_target_distance_mean": float(self.swap_to_target_distance.mean()),
                "distance_threshold": self.distance_threshold,
            },
            "swap_following": swap_following,
            "baseline_following": baseline_following,
            # > 0: the swap follows pose / mouth better than pasting the identity face does.
            "pose_following_margin_deg": baseline_following["pose_mae_deg"] - swap_following["pose_mae_deg"],
            "mouth_following_margin": baseline_following["mouth_mae"] - swap_following["mouth_mae"],
        }
        return round_floats(_finite_or_none(figures))


def _finite_or_none(value):
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def evaluate_swaps(
    target_crops: np.ndarray,
    swapped_crops: np.ndarray,
    profile: Mapping,
    embedder: FaceEmbedder,
    baseline_face: np.ndarray,
    measure_size: int | None = None,
) -> SwapEvaluation:
    """Measure swaps against their target faces and against the pasted ``baseline_face``.

    target_crops [N, S, S, 3] and swapped_crops [N, s, s, 3] (e.g. the model's output at its
    own size) are aligned uint8 BGR crops, row i the swap of target i; baseline_face [s', s', 3]
    (``mean_identity_face`` or ``most_frontal_face``). Everything is resized to
    ``measure_size`` (default: the target crops' size) before it is measured, so all three sets
    go through the same landmarker and embedder at the same resolution. ``profile``: the
    identity profile dict, made with the same embedder.
    """
    target_crops, swapped_crops = np.asarray(target_crops), np.asarray(swapped_crops)
    if len(target_crops) != len(swapped_crops) or len(target_crops) == 0:
        raise ValueError(
            f"evaluate_swaps needs one swap per target face, got {len(target_crops)} targets and {len(swapped_crops)} swaps"
        )
    if profile.get("embedder") not in (None, embedder.name):
        raise ValueError(
            f"the profile was built with embedder {profile.get('embedder')!r}, not {embedder.name!r}; use the same one"
        )
    size = measure_size or target_crops.shape[1]
    target = measure_faces(resize_crops(target_crops, size), profile, embedder)
    swap = measure_faces(resize_crops(swapped_crops, size), profile, embedder)
    # The baseline is the same crop for every face: measured once, repeated.
    baseline = repeated(measure_faces(resize_crops(np.asarray(baseline_face)[None], size), profile, embedder), len(target_crops))
    pair_distances = np.array(
        [embedder.distance(s, t) for s, t in zip(swap.embeddings, target.embeddings)], dtype=np.float64
    )
    return SwapEvaluation(target, swap, baseline, pair_distances, float(profile["distance_threshold"]))
