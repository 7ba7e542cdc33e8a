"""Identity profile: robust centre of a person's face embeddings, outliers, quality stats.

Pure functions on arrays (no Dagster, no model loading): the asset embeds the aligned faces
with an embedder from `facepipe.embed` and hands the rows and the per-face quality inputs here.

Outlier rule (per embedder): start from the medoid (robust while fewer than half the faces
are somebody else's), then alternate "inliers = faces within the cutoff of the centre" and
"centre = mean of the inliers" until the inlier set stops changing. The cutoff is the
embedder's same-person `distance_threshold` (dlib 0.6 Euclidean, ArcFace 0.7 cosine
distance): a face the embedder would not verify as the identity's centre is not that person.
Same-person faces sit far inside it (dlib: 0.05-0.2 from the centre on the sample photos),
another person sits beyond it (dlib: about 0.67).

The centre lives in the embedder's own units. dlib descriptors are not unit vectors (norm
about 1.4) and its 0.6 threshold is meant for them, so the profile stores the L2-normalised
`embedding_mean` users expect plus `embedding_mean_norm`; `profile_centre()` puts the two back
together and `distance_to_profile()` measures new faces against it.
`embedding_std` is the per-dimension spread of the used faces in the same units.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from facepipe.embed import embedding_distance, l2_normalise

# 2: quality_stats.avg_face_score (the face detection score under the name the users' profile
# format reads) beside mean_detection_score; nothing removed, so a format-1 reader still works.
PROFILE_FORMAT_VERSION = 2
# Every float in the profile JSON is written with this many significant digits, so the text
# does not depend on float noise below it and two builds give the same bytes.
SIGNIFICANT_DIGITS = 6

# MediaPipe FaceMesh indices used for the pose proxies: face-oval points at cheek height on
# the image left / right, the nose tip, the iris centres and the mouth corners.
CHEEK_LEFT, CHEEK_RIGHT, NOSE_TIP = 234, 454, 1
EYE_LEFT, EYE_RIGHT, MOUTH_LEFT, MOUTH_RIGHT = 468, 473, 61, 291


@dataclass(frozen=True)
class OutlierRejection:
    centre: np.ndarray  # [D] in the embedder's units (mean of the inliers)
    distances: np.ndarray  # [N] distance of every face to the centre
    inliers: np.ndarray  # [N] bool
    cutoff: float
    iterations: int
    converged: bool


def embedding_centre(embeddings: np.ndarray, metric: str) -> np.ndarray:
    """Mean of the rows; for cosine the direction is what counts, so it is normalised."""
    mean = np.asarray(embeddings, dtype=np.float64).mean(axis=0)
    return l2_normalise(mean) if metric == "cosine" else mean


def medoid_index(embeddings: np.ndarray, metric: str) -> int:
    """The face with the smallest total distance to all others (lowest index on ties)."""
    pairwise = embedding_distance(embeddings, embeddings, metric)
    return int(np.argmin(pairwise.sum(axis=1)))


def reject_outliers(embeddings: np.ndarray, metric: str, cutoff: float, max_iterations: int = 20,
                    start: np.ndarray | None = None) -> OutlierRejection:
    """Robust centre and inlier flags: medoid start (or the given `start` centre, for a caller
    that knows better whose faces these mostly are), then mean of the faces within `cutoff`
    until the inlier set is stable. The inlier set is never empty when starting from the
    medoid (the mean of faces within `cutoff` of a point has at least one of them within
    `cutoff`); a `start` with no face within `cutoff` falls back to the medoid."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"need at least one embedding row [N, D], got shape {embeddings.shape}")
    inliers = embedding_distance(embeddings, start, metric) <= cutoff if start is not None else None
    if inliers is None or not inliers.any():
        medoid = embeddings[medoid_index(embeddings, metric)]
        inliers = embedding_distance(embeddings, medoid, metric) <= cutoff
    converged = False
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        centre = embedding_centre(embeddings[inliers], metric)
        distances = embedding_distance(embeddings, centre, metric)
        updated = distances <= cutoff
        if np.array_equal(updated, inliers) or not updated.any():
            converged = bool(updated.any())
            break
        inliers = updated
    else:
        # A cycle between inlier sets: settle on the last set and its own mean.
        centre = embedding_centre(embeddings[inliers], metric)
        distances = embedding_distance(embeddings, centre, metric)
    return OutlierRejection(centre, distances, inliers, float(cutoff), iterations, converged)


def laplacian_variance(crop_bgr: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Sharpness of a crop: variance of the Laplacian of the grey image (higher is sharper;
    a blurred frame scores low). Restricted to `mask > 0` when a face mask is given."""
    grey = cv2.cvtColor(np.asarray(crop_bgr), cv2.COLOR_BGR2GRAY)
    laplacian = cv2.Laplacian(grey, cv2.CV_64F)
    values = laplacian[np.asarray(mask) > 0] if mask is not None else laplacian
    return float(values.var()) if values.size else 0.0


def crop_sharpness(crops_bgr: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """`laplacian_variance` of every crop, [N] float64."""
    return np.array(
        [laplacian_variance(crop, None if masks is None else masks[i]) for i, crop in enumerate(crops_bgr)],
        dtype=np.float64,
    )


def pose_proxies(crop_landmarks: np.ndarray) -> np.ndarray:
    """[N, 2] (yaw, pitch) proxies from crop-space FaceMesh landmarks [N, 478, >=2].

    yaw: (nose-to-left-cheek - nose-to-right-cheek) / cheek width, 0 when frontal, towards
    +-1 as the head turns. pitch: where the nose tip sits between the eye line (0) and the
    mouth line (1). Dimensionless; their spread over the faces says how varied the poses are.
    """
    points = np.asarray(crop_landmarks, dtype=np.float64)[..., :2]
    nose = points[:, NOSE_TIP]
    cheek_left, cheek_right = points[:, CHEEK_LEFT], points[:, CHEEK_RIGHT]
    width = np.maximum(np.abs(cheek_right[:, 0] - cheek_left[:, 0]), 1e-9)
    yaw = ((nose[:, 0] - cheek_left[:, 0]) - (cheek_right[:, 0] - nose[:, 0])) / width
    eye_y = (points[:, EYE_LEFT, 1] + points[:, EYE_RIGHT, 1]) / 2
    mouth_y = (points[:, MOUTH_LEFT, 1] + points[:, MOUTH_RIGHT, 1]) / 2
    pitch = (nose[:, 1] - eye_y) / np.maximum(mouth_y - eye_y, 1e-9)
    return np.stack([yaw, pitch], axis=1)


def landmark_variance(crop_landmarks: np.ndarray, crop_size: int) -> float:
    """Mean over landmarks of the variance of their crop position across faces, in units of
    the crop size squared: how much the aligned faces differ in shape (pose, expression,
    landmark jitter). 0 for one face."""
    points = np.asarray(crop_landmarks, dtype=np.float64)[..., :2] / float(crop_size)
    if points.shape[0] < 2:
        return 0.0
    return float(points.var(axis=0).sum(axis=-1).mean())


def self_similarity(inlier_distances: np.ndarray, threshold: float) -> dict:
    """How tightly the used faces gather around the centre.

    `self_similarity` = 1 - mean distance / same-person threshold: 1 when every face is the
    centre, 0 when the average face is at the threshold. An asset check can require, say,
    >= 0.5 (the average face well inside the same-person radius).
    """
    distances = np.asarray(inlier_distances, dtype=np.float64)
    if distances.size == 0:
        return {"self_distance_mean": float("nan"), "self_distance_p95": float("nan"), "self_similarity": 0.0}
    mean = float(distances.mean())
    return {
        "self_distance_mean": mean,
        "self_distance_p95": float(np.percentile(distances, 95)),
        "self_similarity": 1.0 - mean / float(threshold),
    }


def round_floats(value, digits: int = SIGNIFICANT_DIGITS):
    """Recursively turn numbers into plain Python floats/ints with `digits` significant digits
    (numpy scalars included); -0.0 becomes 0.0."""
    if isinstance(value, Mapping):
        return {str(key): round_floats(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [round_floats(item, digits) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise ValueError(f"non-finite number {value!r} cannot go into a profile")
        rounded = float(f"{float(value):.{digits}g}")
        return 0.0 if rounded == 0.0 else rounded
    return value


def profile_json_bytes(profile: Mapping) -> bytes:
    """The profile as byte-deterministic JSON: rounded floats, sorted keys, fixed layout."""
    text = json.dumps(round_floats(profile), sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("utf-8")


def build_profile(
    identity_key: str,
    embeddings: np.ndarray,
    embedder: Mapping,
    detection_scores: np.ndarray,
    sharpness: np.ndarray,
    crop_landmarks: np.ndarray,
    crop_size: int,
    name: str | None = None,
    face_ids: Sequence[str] | None = None,
    cutoff: float | None = None,
) -> tuple[dict, pd.DataFrame]:
    """The identity profile (JSON-ready dict, floats already rounded) and the per-face table.

    embeddings: [N, D] rows from the embedder. embedder: its `describe()` (name, dim,
    metric, distance_threshold, model_hash). detection_scores, sharpness: [N] per face
    (sharpness from `crop_sharpness`). crop_landmarks: [N, 478, >=2] in crop pixels of
    `crop_size`. face_ids: stable names of the faces (default their index) used in the table
    and in the list of rejected faces. cutoff: outlier cutoff, default the embedder's
    same-person threshold.

    Quality stats describe the faces the profile is built from (the inliers); counts say
    how many were embedded and rejected. `num_frames` is the number of faces used.
    `avg_face_score` is the mean detection score, the name the users' profile format reads
    (`mean_detection_score` holds the same value for readers of this project's earlier profiles).
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    count = embeddings.shape[0] if embeddings.ndim == 2 else 0
    if count == 0:
        raise ValueError(f"identity {identity_key!r}: no faces to build a profile from")
    if embeddings.shape[1] != int(embedder["dim"]):
        raise ValueError(
            f"embeddings have {embeddings.shape[1]} dimensions, embedder {embedder['name']} gives {embedder['dim']}"
        )
    detection_scores = np.asarray(detection_scores, dtype=np.float64)
    sharpness = np.asarray(sharpness, dtype=np.float64)
    crop_landmarks = np.asarray(crop_landmarks, dtype=np.float64)
    if not (len(detection_scores) == len(sharpness) == len(crop_landmarks) == count):
        raise ValueError(
            f"per-face inputs disagree: {count} embeddings, {len(detection_scores)} detection scores, "
            f"{len(sharpness)} sharpness values, {len(crop_landmarks)} landmark sets"
        )
    face_ids = [str(i) for i in range(count)] if face_ids is None else [str(face_id) for face_id in face_ids]
    if len(face_ids) != count:
        raise ValueError(f"{len(face_ids)} face ids for {count} faces")

    metric = str(embedder["metric"])
    threshold = float(embedder["distance_threshold"])
    rejection = reject_outliers(embeddings, metric, threshold if cutoff is None else float(cutoff))
    inliers = rejection.inliers
    used = embeddings[inliers]
    poses = pose_proxies(crop_landmarks)
    centre_norm = float(np.linalg.norm(rejection.centre))

    quality_stats = {
        "faces_embedded": count,
        "faces_used": int(inliers.sum()),
        "outliers_rejected": int((~inliers).sum()),
        "outlier_faces": [face_ids[i] for i in np.flatnonzero(~inliers)],
        "outlier_cutoff": rejection.cutoff,
        "outlier_iterations": rejection.iterations,
        "outlier_converged": rejection.converged,
        "mean_detection_score": float(detection_scores[inliers].mean()),
        "avg_face_score": float(detection_scores[inliers].mean()),  # the same value under the users' format's name
        "mean_laplacian_variance": float(sharpness[inliers].mean()),
        "min_laplacian_variance": float(sharpness[inliers].min()),
        "pose_spread_yaw": float(poses[inliers, 0].std()),
        "pose_spread_pitch": float(poses[inliers, 1].std()),
        "landmark_variance": landmark_variance(crop_landmarks[inliers], crop_size),
        **self_similarity(rejection.distances[inliers], threshold),
    }
    profile = {
        "format_version": PROFILE_FORMAT_VERSION,
        "id": identity_key,
        "name": name if name is not None else identity_key,
        "embedding_mean": l2_normalise(rejection.centre).tolist(),
        "embedding_mean_norm": centre_norm,
        "embedding_std": used.std(axis=0).tolist(),
        "embedding_metric": metric,
        "distance_threshold": threshold,
        "num_frames": int(inliers.sum()),
        "quality_stats": quality_stats,
        "embedder": str(embedder["name"]),
        "embedding_dim": int(embedder["dim"]),
        "embedder_model_hash": str(embedder["model_hash"]),
    }
    faces = pd.DataFrame(
        {
            "face_id": face_ids,
            "detection_score": detection_scores,
            "laplacian_variance": sharpness,
            "yaw_proxy": poses[:, 0],
            "pitch_proxy": poses[:, 1],
            "distance_to_centre": rejection.distances,
            "inlier": inliers,
            "embedding": [row.astype(np.float32) for row in embeddings],
        }
    )
    return round_floats(profile), faces


def profile_centre(profile: Mapping) -> np.ndarray:
    """The centre in the embedder's own units, from a profile dict (as loaded from JSON)."""
    return np.asarray(profile["embedding_mean"], dtype=np.float64) * float(profile.get("embedding_mean_norm", 1.0))


def distance_to_profile(profile: Mapping, embeddings: np.ndarray) -> np.ndarray:
    """Distance of embedding rows to the profile's centre in the profile's metric (compare
    with the profile's `distance_threshold`)."""
    return embedding_distance(embeddings, profile_centre(profile), str(profile["embedding_metric"]))
