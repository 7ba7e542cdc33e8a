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

A model's face is measured alone (``face_alone``: mid-grey outside its own mask), the baseline's
alike: what a model paints around the face (its training backdrop, an export's fill) is never
pasted, yet the landmarker and the embedder read it — measured, a backdrop or a fill around the
same face moved its read yaw by up to 12 degrees.

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
- mouth opening: inner-lip gap (points 13-14) over face height (forehead 10 to chin 152);
- eye opening: lid gap over eye width (corner to corner), the mean of both eyes.

Identity, from the embedder: the share of swaps within the profile's same-person threshold, and
the share that sit closer to the identity profile than to their own target face (a swap that
stays the target fails the second even when it drifts under the threshold).

Image quality, from the pixels (all at the swap's own size; the other crops are resized to it):
- sharpness ratio: variance of the Laplacian over the central face (``faces.CENTRAL_FACE``), candidate
  over target, median over faces (< 1: blurrier than the face it replaces);
- checkerboard: the RMS amplitude, in grey levels, of what lies within ``CHECKER_RADIUS``
  cycles/px of the three period-2 frequencies (0.5, 0), (0, 0.5), (0.5, 0.5) of the spectrum of
  the central face (the raw background of a swap is never pasted)
  (Hann window, compensated) — where a x2 pixel-shuffle upsampler leaves its pattern: a +-a
  2-px checker reads a, a smooth face ~0; compare the swap's with the target's (real fine
  detail reads some too);
- temporal ratio: mean frame-to-frame absolute change of the central face in the candidate's
  sequence over the same in the target's (1: changes as much as the target; 0: frozen, as the
  pasted baseline is; > 1: flicker). Crops must be in time order.

Following is the mean absolute difference swap - target (degrees; mouth and eyes in their ratios) and
the Pearson correlation over faces; a series that does not vary cannot follow, so its
correlation is defined as 0 (the baseline's always is). ``pose_mae_deg`` and ``pose_corr``
combine yaw and pitch (roll is reported on its own: see above). The absolute error also holds a
per-person offset (two faces in the same pose read slightly different angles off the generic
3D face), the correlation does not: read both. And the span ratio (``span_ratio``: the
candidate's 5th-95th percentile range over the target's, for mouth, yaw, pitch and roll): a mouth
in step with the target's but opening a fifth as far correlates well and spans 0.2. Only faces
where landmarks were found in both crops are compared; the detection rate is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from facepipe.align import template_points
from facepipe.embed import FaceEmbedder
from facepipe.faces import central_face, resize_crops
from facepipe.landmarks import detect_landmarks
from facepipe.profile import distance_to_profile, laplacian_variance, round_floats

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
# Per eye (image left, image right): outer/inner corner, upper lid, lower lid.
EYE_CORNERS = ((33, 133), (362, 263))
EYE_LIDS = ((159, 145), (386, 374))


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
    return six_point_pose(_as_batch(landmarks)[:, POSE_LANDMARKS], image_size)


def six_point_pose(points: np.ndarray, image_size: int) -> np.ndarray:
    """``head_pose`` off the six POSE_LANDMARKS alone, [N, 6, 2] pixels: [N, 3] (yaw, pitch, roll)."""
    camera = np.array([[image_size, 0.0, image_size / 2], [0.0, image_size, image_size / 2], [0.0, 0.0, 1.0]])
    poses = np.full((len(points), 3), np.nan)
    for i, image_points in enumerate(np.ascontiguousarray(points, dtype=np.float64)):
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


def eye_openings(landmarks: np.ndarray) -> np.ndarray:
    """[N, 2] lid gap over eye width of each eye (image left, image right; ~0.25-0.35 open, under
    0.1 closed): a wink closes one."""
    points = _as_batch(landmarks)
    ratios = []
    for (corner_a, corner_b), (upper, lower) in zip(EYE_CORNERS, EYE_LIDS):
        gap = np.linalg.norm(points[:, lower] - points[:, upper], axis=1)
        width = np.linalg.norm(points[:, corner_b] - points[:, corner_a], axis=1)
        ratios.append(gap / np.maximum(width, 1e-9))
    return np.stack(ratios, axis=1)


def eye_opening(landmarks: np.ndarray) -> np.ndarray:
    """[N] the mean opening of both eyes (``eye_openings``)."""
    return eye_openings(landmarks).mean(axis=1)


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
    eyes: np.ndarray | None = None  # [N] eye opening (NaN where not detected)


def checked_crops(crops: np.ndarray) -> np.ndarray:
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[3] != 3 or crops.shape[1] != crops.shape[2] or crops.dtype != np.uint8:
        raise ValueError(f"expected aligned uint8 BGR crops [N, S, S, 3], got {crops.dtype} {list(crops.shape)}")
    return crops


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
        eyes=eye_opening(landmarks),
    )


def repeated(measures: FaceMeasures, count: int) -> FaceMeasures:
    """One face's measures repeated for ``count`` faces (the pasted baseline)."""
    return FaceMeasures(
        detected=np.repeat(measures.detected, count),
        pose=np.repeat(measures.pose, count, axis=0),
        mouth=np.repeat(measures.mouth, count),
        embeddings=np.repeat(measures.embeddings, count, axis=0),
        distance_to_profile=np.repeat(measures.distance_to_profile, count),
        eyes=None if measures.eyes is None else np.repeat(measures.eyes, count),
    )


# ---------------------------------------------------------------------------------------------
# Baseline faces


NEUTRAL_GREY = 128


def face_alone(crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Aligned uint8 crops [N, S, S, 3] (or one [S, S, 3]) with everything outside their masks
    [N, S, S] (or one [S, S]; uint8 0-255 or float 0-1, cut at half) set to mid-grey."""
    crops, masks = np.asarray(crops), np.asarray(masks)
    inside = masks >= (128 if masks.dtype == np.uint8 else 0.5)
    if inside.shape != crops.shape[:-1]:
        raise ValueError(f"face_alone needs one mask per crop, got crops {list(crops.shape)} and masks {list(masks.shape)}")
    return np.where(inside[..., None], crops, np.uint8(NEUTRAL_GREY)).astype(np.uint8)


def mean_identity_face_alone(identity_crops: np.ndarray, identity_masks: np.ndarray) -> np.ndarray:
    """The mean identity face on mid-grey outside the identity's mean mask: the baseline measured
    as the swaps are (``face_alone``)."""
    return face_alone(mean_identity_face(identity_crops), mean_identity_face(identity_masks))


def mean_identity_face(identity_crops: np.ndarray) -> np.ndarray:
    """The pixel mean of the identity's aligned crops [S, S, 3] uint8 — the "mean identity face"
    (sharp when the poses agree, ghosted when they vary a lot: then use most_frontal_face). Of
    their masks [N, S, S], the mean mask [S, S]."""
    crops = np.asarray(identity_crops)
    if crops.ndim not in (3, 4) or len(crops) == 0:
        raise ValueError(f"mean_identity_face needs aligned crops [N, S, S, 3] or masks [N, S, S], got {list(crops.shape)}")
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


def span_ratio(candidate: np.ndarray, target: np.ndarray) -> float:
    """How wide the candidate's values range against the target's: the 5th-95th percentile span of
    one over the other's (1: as wide; NaN where the target's does not vary or under 3 values). A
    correlation alone passes a mouth that opens a fifth as far as the target's, in step with it."""
    candidate, target = np.asarray(candidate, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if len(target) < 3:
        return float("nan")
    target_span = np.subtract(*np.percentile(target, [95, 5]))
    return float(np.subtract(*np.percentile(candidate, [95, 5])) / target_span) if target_span > 1e-12 else float("nan")


def correlation_interval(a: np.ndarray, b: np.ndarray, level: float = 0.9, draws: int = 2000,
                         seed: int = 0) -> tuple[float, float]:
    """How surely ``correlation(a, b)`` is read off these faces: the central ``level`` interval of
    the correlation over ``draws`` resamplings of the faces (pairs drawn with replacement; the
    percentile bootstrap). Seeded, so a report is reproducible; NaNs under 3 values. It holds the
    noise of which frames were measured, not the training's from run to run."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3:
        return float("nan"), float("nan")
    rows = np.random.default_rng(seed).integers(0, len(a), size=(draws, len(a)))
    r = [correlation(a[drawn], b[drawn]) for drawn in rows]
    low, high = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def following_intervals(candidate: FaceMeasures, target: FaceMeasures, level: float = 0.9) -> dict[str, list[float]]:
    """``correlation_interval`` of mouth, eye opening, yaw and pitch following, over the faces
    detected in both (``attribute_following``'s correlations, with how far they could move)."""
    both = candidate.detected & target.detected
    series = {"mouth": (candidate.mouth, target.mouth), "yaw": (candidate.pose[:, 0], target.pose[:, 0]),
              "pitch": (candidate.pose[:, 1], target.pose[:, 1])}
    if candidate.eyes is not None and target.eyes is not None:
        series["eyes"] = (candidate.eyes, target.eyes)
    return {name: list(correlation_interval(c[both], t[both], level)) for name, (c, t) in series.items()}


def attribute_following(candidate: FaceMeasures, target: FaceMeasures) -> dict[str, float]:
    """How well the candidate's pose and mouth follow the target's, over faces detected in both."""
    both = candidate.detected & target.detected
    target_detected = int(target.detected.sum())
    figures: dict[str, float] = {
        "faces_compared": int(both.sum()),
        "detection_rate": float(both.sum() / target_detected) if target_detected else float("nan"),
    }
    if not both.any():
        return {**figures, "pose_mae_deg": float("nan"), "pose_corr": float("nan"), "mouth_mae": float("nan"),
                "eye_mae": float("nan")}
    pose_error = np.abs(candidate.pose[both] - target.pose[both])
    for axis, name in enumerate(POSE_NAMES):
        figures[f"{name}_mae_deg"] = float(pose_error[:, axis].mean())
        figures[f"{name}_corr"] = correlation(candidate.pose[both, axis], target.pose[both, axis])
        figures[f"{name}_span"] = span_ratio(candidate.pose[both, axis], target.pose[both, axis])
    # Yaw and pitch only: alignment levels the eyes, so roll in a crop is near zero for every
    # face and says nothing about the model (it is still reported on its own).
    figures["pose_mae_deg"] = float(pose_error[:, :2].mean())
    figures["pose_corr"] = (figures["yaw_corr"] + figures["pitch_corr"]) / 2
    figures["mouth_mae"] = float(np.abs(candidate.mouth[both] - target.mouth[both]).mean())
    figures["mouth_corr"] = correlation(candidate.mouth[both], target.mouth[both])
    figures["mouth_span"] = span_ratio(candidate.mouth[both], target.mouth[both])
    if candidate.eyes is not None and target.eyes is not None:
        figures["eye_mae"] = float(np.abs(candidate.eyes[both] - target.eyes[both]).mean())
        figures["eye_corr"] = correlation(candidate.eyes[both], target.eyes[both])
    return figures


# ---------------------------------------------------------------------------------------------
# Image quality (pixels)

CHECKER_RADIUS = 1 / 16  # cycles/px around each period-2 frequency


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


def sharpness(crops: np.ndarray) -> np.ndarray:
    """[N] variance of the Laplacian over the central face of each aligned crop."""
    return np.array([laplacian_variance(np.ascontiguousarray(central_face(crop))) for crop in checked_crops(crops)])


def sharpness_ratio(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Median over faces of sharpness(candidate) / sharpness(reference), both at the
    candidate's size (< 1: blurrier than the reference)."""
    candidate = checked_crops(candidate)
    reference = resize_crops(reference, candidate.shape[1])
    ratios = sharpness(candidate) / np.maximum(sharpness(reference), 1e-9)
    return float(np.median(ratios))


def checkerboard(crops: np.ndarray, radius: float = CHECKER_RADIUS) -> np.ndarray:
    """[N] RMS amplitude (grey levels) of the central face of each crop (``faces.CENTRAL_FACE``: what a
    runtime pastes; a swap's raw background never shows) within ``radius`` cycles/px of the
    period-2 frequencies (0.5, 0), (0, 0.5) and (0.5, 0.5): Parseval over those spectral bins of
    the Hann-windowed grey region, divided by the window's mean square."""
    faces = [_grey(central_face(crop)).astype(np.float64) for crop in checked_crops(crops)]
    height, width = faces[0].shape
    window = np.outer(np.hanning(height), np.hanning(width))
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")

    def distance_to(f, centre):  # on the periodic frequency axis, where -0.5 and 0.5 meet
        d = np.abs(f - centre)
        return np.minimum(d, 1 - d)

    near = np.zeros((height, width), dtype=bool)
    for cy, cx in ((0.0, 0.5), (0.5, 0.0), (0.5, 0.5)):
        near |= np.hypot(distance_to(fy, cy), distance_to(fx, cx)) <= radius
    amplitudes = []
    for grey in faces:
        power = np.abs(np.fft.fft2((grey - grey.mean()) * window)) ** 2
        amplitudes.append(np.sqrt(power[near].sum() / grey.size**2 / (window**2).mean()))
    return np.array(amplitudes)


def temporal_change(crops: np.ndarray) -> np.ndarray:
    """[N-1] mean absolute change (grey levels) of the central face between successive crops."""
    faces = np.stack([_grey(central_face(crop)).astype(np.float64) for crop in checked_crops(crops)])
    return np.abs(np.diff(faces, axis=0)).mean(axis=(1, 2))


def temporal_ratio(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Frame-to-frame change of the candidate sequence over that of the reference (both in time
    order, measured at the candidate's size): 1 as lively as the reference, 0 frozen, > 1
    flickering. NaN under two frames or when the reference does not change."""
    candidate = checked_crops(candidate)
    reference = resize_crops(reference, candidate.shape[1])
    if len(candidate) < 2:
        return float("nan")
    reference_change = temporal_change(reference).mean()
    return float(temporal_change(candidate).mean() / reference_change) if reference_change > 1e-9 else float("nan")


def face_colour(crops: np.ndarray) -> np.ndarray:
    """[N, 3] mean CIELAB colour (L 0-100, a and b about 0) of the central face of each aligned crop:
    the skin's tone and light, with the eyes, nose and lips that every face has."""
    faces = [cv2.cvtColor(central_face(crop).astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB) for crop in checked_crops(crops)]
    return np.stack([face.reshape(-1, 3).mean(axis=0) for face in faces]).astype(np.float64)


def tone_gap(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Median over faces of the distance (CIE76 ΔE) between the mean colours of the central face of
    each candidate and of its reference (``face_colour``), both at the candidate's size: 0 in the
    reference's skin tone and light; ~2 a just visible difference, tens a face of another tone."""
    candidate = checked_crops(candidate)
    reference = resize_crops(reference, candidate.shape[1])
    return float(np.median(np.linalg.norm(face_colour(candidate) - face_colour(reference), axis=1)))


@dataclass(frozen=True)
class ImageQuality:
    """Pixel figures of the swaps, the pasted baseline and the targets, at the swap's size."""

    size: int
    sharpness_ratio: float  # swap over target, median
    baseline_sharpness_ratio: float
    checkerboard: np.ndarray  # [N] swaps
    target_checkerboard: np.ndarray  # [N]
    baseline_checkerboard: float
    temporal_ratio: float  # swap over target
    baseline_temporal_ratio: float  # 0 whenever the target moves: the same face every frame
    tone_gap: float  # swap against target: ΔE of the central face's mean colour, median
    baseline_tone_gap: float

    def summary(self) -> dict:
        return {
            "measured_at_px": self.size,
            "sharpness_ratio": {"swap": self.sharpness_ratio, "baseline": self.baseline_sharpness_ratio},
            "checkerboard": {"swap": float(np.median(self.checkerboard)), "target": float(np.median(self.target_checkerboard)),
                             "baseline": self.baseline_checkerboard},
            "temporal_ratio": {"swap": self.temporal_ratio, "baseline": self.baseline_temporal_ratio},
            "tone_gap": {"swap": self.tone_gap, "baseline": self.baseline_tone_gap},
        }


def image_quality(target_crops: np.ndarray, swapped_crops: np.ndarray, baseline_face: np.ndarray) -> ImageQuality:
    """Sharpness, checkerboard, temporal and skin-tone figures of swaps (time order) against their
    targets, beside the pasted baseline face, all at the swaps' size."""
    swaps = checked_crops(swapped_crops)
    size = swaps.shape[1]
    targets = resize_crops(target_crops, size)
    baseline = np.repeat(resize_crops(np.asarray(baseline_face)[None], size), len(swaps), axis=0)
    return ImageQuality(
        size=size,
        sharpness_ratio=sharpness_ratio(swaps, targets),
        baseline_sharpness_ratio=sharpness_ratio(baseline, targets),
        checkerboard=checkerboard(swaps),
        target_checkerboard=checkerboard(targets),
        baseline_checkerboard=float(checkerboard(baseline[:1])[0]),
        temporal_ratio=temporal_ratio(swaps, targets),
        baseline_temporal_ratio=temporal_ratio(baseline, targets),
        tone_gap=tone_gap(swaps, targets),
        baseline_tone_gap=tone_gap(baseline, targets),
    )


@dataclass(frozen=True)
class SwapEvaluation:
    target: FaceMeasures
    swap: FaceMeasures
    baseline: FaceMeasures  # the pasted face's measures, repeated per target face
    swap_to_target_distance: np.ndarray  # [N] embedding distance swap ↔ its target face
    distance_threshold: float  # the profile's same-person threshold
    baseline_to_target_distance: np.ndarray | None = None  # [N] the pasted face ↔ each target face
    image: ImageQuality | None = None

    def summary(self) -> dict:
        """JSON-ready figures (6 significant digits, undefined values as None)."""
        target_mean = float(self.target.distance_to_profile.mean())
        swap_mean = float(self.swap.distance_to_profile.mean())
        baseline_mean = float(self.baseline.distance_to_profile.mean())
        swap_following = attribute_following(self.swap, self.target)
        baseline_following = attribute_following(self.baseline, self.target)
        threshold = self.distance_threshold
        identity = {
            "target_distance_mean": target_mean,
            "swap_distance_mean": swap_mean,
            "baseline_distance_mean": baseline_mean,
            # > 0: the swap sits closer to the identity than the face it replaced.
            "identity_transfer_gain": target_mean - swap_mean,
            # shares of faces: within the same-person threshold of the profile ...
            "swap_within_threshold": float((self.swap.distance_to_profile < threshold).mean()),
            "baseline_within_threshold": float((self.baseline.distance_to_profile < threshold).mean()),
            "target_within_threshold": float((self.target.distance_to_profile < threshold).mean()),
            # ... and closer to the identity profile than to the target face it replaced
            "swap_closer_to_identity_than_target": float(
                (self.swap.distance_to_profile < self.swap_to_target_distance).mean()),
            "swap_to_target_distance_mean": float(self.swap_to_target_distance.mean()),
            "distance_threshold": threshold,
        }
        if self.baseline_to_target_distance is not None:
            identity["baseline_closer_to_identity_than_target"] = float(
                (self.baseline.distance_to_profile < self.baseline_to_target_distance).mean())
        figures = {
            "faces": len(self.target.detected),
            "identity": identity,
            "swap_following": swap_following,
            "baseline_following": baseline_following,
            # > 0: the swap follows pose / mouth / eyes better than pasting the identity face does.
            "pose_following_margin_deg": baseline_following["pose_mae_deg"] - swap_following["pose_mae_deg"],
            "mouth_following_margin": baseline_following["mouth_mae"] - swap_following["mouth_mae"],
            "eye_following_margin": baseline_following.get("eye_mae", float("nan"))
            - swap_following.get("eye_mae", float("nan")),
        }
        if self.image is not None:
            figures["image"] = self.image.summary()
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
    identity profile dict, made with the same embedder. Image quality (``ImageQuality``) is
    measured at the swaps' own size; its temporal ratio compares successive rows, so give the
    faces in time order.
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
    baseline_distances = np.array(
        [embedder.distance(b, t) for b, t in zip(baseline.embeddings, target.embeddings)], dtype=np.float64
    )
    return SwapEvaluation(target, swap, baseline, pair_distances, float(profile["distance_threshold"]),
                          baseline_distances, image_quality(target_crops, swapped_crops, baseline_face))


# ---------------------------------------------------------------------------------------------
# Feeding a DFM model the way FaceFusion's deep_swapper does (DESIGN.md, Exports)
#
# Five points from 68-point landmarks (facepipe.align.five_points: eye-contour means, nose tip,
# mouth corners, the points our own crops are aligned on), a partial affine fit by RANSAC to the dfl_whole_face template at
# the model's size, INTER_AREA warp with replicated borders; the crop is sharpened
# (1.75·crop − 0.75·GaussianBlur(σ=2), saturated to uint8) and scaled to [0, 1]; the outputs are
# unpacked by position (face mask, celeb face, celeb mask); the paste-back mask is the minimum
# of a blurred box and the eroded, blurred minimum of both output masks; before pasting, the swap's
# colours are matched to the crop it replaces, as far as their hue/saturation histograms agree
# (``facefusion_match_colour``). FaceFusion's optional occluder model is not emulated.

FACEFUSION_BOX_BLUR = 0.3  # its default face_mask_blur
FACEFUSION_MASK_BLUR = 6.25


def facefusion_crop(frame: np.ndarray, points5: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(aligned crop [size, size, 3], 2x3 frame → crop matrix) as FaceFusion warps a face."""
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(points5, dtype=np.float64), template_points(size),
                                            method=cv2.RANSAC, ransacReprojThreshold=100)
    if matrix is None:
        raise ValueError("degenerate five points: cannot fit the template")
    crop = cv2.warpAffine(frame, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_AREA)
    return crop, matrix


def facefusion_sharpen(crop: np.ndarray) -> np.ndarray:
    """1.75·crop − 0.75·GaussianBlur(crop, σ=2), saturated to uint8 (what deep_swapper feeds)."""
    crop = np.ascontiguousarray(crop)
    return cv2.addWeighted(crop, 1.75, cv2.GaussianBlur(crop, (0, 0), 2), -0.75, 0)


def facefusion_input(crops: np.ndarray) -> np.ndarray:
    """Aligned uint8 BGR crops [N, S, S, 3] → the DFM model's ``in_face:0`` batch, sharpened."""
    return np.stack([facefusion_sharpen(crop) for crop in checked_crops(crops)]).astype(np.float32) / 255.0


def facefusion_output(face: np.ndarray) -> np.ndarray:
    """A celeb face in [0, 1] → uint8 as FaceFusion converts it (scaled, clipped, truncated)."""
    return (np.asarray(face) * 255.0).clip(0, 255).astype(np.uint8)


def facefusion_match_colour(crop: np.ndarray, swap: np.ndarray) -> np.ndarray:
    """The swap [S, S, 3] uint8 with the colours of the crop it replaces, as deep_swapper does it
    before pasting: the crop-minus-swap difference, low-passed by resizing it down (INTER_AREA)
    to 16 px and two more sizes evenly spaced below S (rounded to even) and back up (cubic),
    added to the swap (saturating to uint8 at every size); then blended with the plain swap by
    how alike the two are, the correlation of their hue-saturation histograms (50x60 bins)
    mapped from [-1, 1] to [0, 1]. So a swap in the identity's skin tone takes the target's light
    and skin tone, a coarse correction that leaves the detail to the swap."""
    crop, swap = np.ascontiguousarray(crop), np.ascontiguousarray(swap)
    size = swap.shape[0]

    def toward(reference: np.ndarray, image: np.ndarray, side: int) -> np.ndarray:
        small = [cv2.resize(x, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) for x in (reference, image)]
        difference = cv2.resize(small[0] - small[1], (size, size), interpolation=cv2.INTER_CUBIC)
        return (image + difference).clip(0, 255).astype(np.uint8)

    matched = crop
    for side in np.linspace(16, size, 3, endpoint=False):
        matched = toward(matched, swap, int(round(side / 2)) * 2)
    matched = toward(matched, swap, size)

    def histogram(image: np.ndarray) -> np.ndarray:
        return cv2.calcHist([cv2.cvtColor(image, cv2.COLOR_BGR2HSV)], [0, 1], None, [50, 60], [0, 180, 0, 256])

    alike = float(np.interp(cv2.compareHist(histogram(crop), histogram(swap), cv2.HISTCMP_CORREL), [-1, 1], [0, 1]))
    return cv2.addWeighted(swap, 1 - alike, matched, alike, 0)


def facefusion_box_mask(size: int, blur: float = FACEFUSION_BOX_BLUR) -> np.ndarray:
    """[size, size] float32: ones with a zeroed border of ``blur``·size/4 px, Gaussian-softened."""
    amount = int(size * 0.5 * blur)
    border = max(amount // 2, 1)
    mask = np.zeros((size, size), dtype=np.float32)
    mask[border:size - border, border:size - border] = 1.0
    return cv2.GaussianBlur(mask, (0, 0), amount * 0.25) if amount > 0 else mask


def facefusion_paste_mask(face_mask: np.ndarray, celeb_mask: np.ndarray) -> np.ndarray:
    """[S, S] float32 paste-back mask from the model's two output masks (each [S, S] or
    [S, S, 1] in [0, 1]): their minimum, eroded twice (3x3 ellipse), blurred (σ 6.25), then
    the minimum with ``facefusion_box_mask``."""
    size = np.asarray(face_mask).shape[0]
    mask = np.minimum(np.asarray(face_mask, np.float32).reshape(size, size),
                      np.asarray(celeb_mask, np.float32).reshape(size, size)).clip(0, 1)
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)), iterations=2)
    mask = cv2.GaussianBlur(mask, (0, 0), FACEFUSION_MASK_BLUR)
    return np.minimum(mask, facefusion_box_mask(size)).clip(0, 1)


def facefusion_paste_back(frame: np.ndarray, crop: np.ndarray, mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The crop blended into the frame through the inverse warp, weighted by ``mask`` [S, S]."""
    inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    height, width = frame.shape[:2]
    alpha = cv2.warpAffine(np.asarray(mask, np.float32), inverse, (width, height)).clip(0, 1)[..., None]
    face = cv2.warpAffine(crop, inverse, (width, height), borderMode=cv2.BORDER_REPLICATE)
    return np.round(alpha * face + (1 - alpha) * frame).clip(0, 255).astype(np.uint8)
