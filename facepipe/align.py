"""Face alignment: similarity transform from five landmarks to the `dfl_whole_face` template.

The exported swap model (DeepFaceLive DFM convention) expects crops aligned to this template,
so everything we train on is aligned the same way, on the same five points the runtimes use.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

# Normalised (x, y) of: eye on the image left, eye on the image right, nose tip,
# mouth corner on the image left, mouth corner on the image right. Multiply by the crop size.
DFL_WHOLE_FACE_TEMPLATE = np.array(
    [
        (0.35342266, 0.39285716),
        (0.62797622, 0.39285716),
        (0.48660713, 0.54017860),
        (0.38839287, 0.68750011),
        (0.59821427, 0.68750011),
    ],
    dtype=np.float64,
)

# The five points as the runtimes take them: FaceFusion's '5/68' (deep_swapper warps by these)
# are the means of the 68-point eye contours (36-41 image left, 42-47 image right), the nose tip
# (30) and the mouth corners (48, 54); here from their MediaPipe FaceMesh counterparts. An eye
# contour's mean stays on the eye when the gaze turns; the iris centre (468/473) does not, and
# aligning on it rotated and shifted our crops against the runtime's (benchmarks/crop_alignment.py).
EYE_CONTOURS = ((33, 160, 158, 133, 153, 144), (362, 385, 387, 263, 373, 380))
NOSE_TIP = 4
MOUTH_CORNERS = (61, 291)
# The iris-centre points facepipe aligned on before (468 appears on the image left for a frontal
# face), kept only to measure against (benchmarks/crop_alignment.py).
IRIS_FIVE_POINTS = np.array([468, 473, 1, 61, 291])


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """[5, 2] template points (eye-contour means, nose tip, mouth corners) from [478, >=2]
    FaceMesh landmarks in pixels, in template order."""
    points = np.asarray(landmarks, dtype=np.float64)[:, :2]
    eyes = [points[list(contour)].mean(axis=0) for contour in EYE_CONTOURS]
    return np.stack([*eyes, points[NOSE_TIP], *points[list(MOUTH_CORNERS)]])


def template_points(size: int) -> np.ndarray:
    """The template's five points in pixels for a crop of `size`."""
    return DFL_WHOLE_FACE_TEMPLATE * size


def alignment_matrix(points5: np.ndarray, size: int) -> np.ndarray:
    """2x3 similarity transform (least squares, deterministic) mapping image points to the crop."""
    transform = SimilarityTransform.from_estimate(np.asarray(points5, dtype=np.float64), template_points(size))
    if not transform:
        raise ValueError("degenerate landmarks: cannot estimate a similarity transform")
    return transform.params[:2].astype(np.float64)


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Warp an image (or a mask, with nearest=True) into the aligned crop."""
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT if nearest else cv2.BORDER_REPLICATE,
    )


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to [N, 2] points."""
    points = np.asarray(points, dtype=np.float64)[:, :2]
    return points @ matrix[:, :2].T + matrix[:, 2]


def hull_mask(points: np.ndarray, size: int) -> np.ndarray:
    """uint8 {0, 255} mask of the convex hull of crop-space landmark points."""
    mask = np.zeros((size, size), dtype=np.uint8)
    hull = cv2.convexHull(np.round(points[:, :2]).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 255)
    return mask


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Aligned crop, hull mask, crop-space landmarks and the 2x3 matrix for one face."""
    return face_crop(image, landmarks, alignment_matrix(five_points(landmarks), size), size)


def face_crop(image: np.ndarray, landmarks: np.ndarray, matrix: np.ndarray, size: int,
              reduction: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`align_face` with the matrix already known, from `image` decoded at 1/`reduction` of the
    frame's size (see `decode_reduction`); landmarks and matrix stay in the frame's pixels."""
    crop = warp_to_crop(image, reduced_matrix(matrix, reduction), size)
    crop_landmarks = transform_points(landmarks, matrix)
    return crop, hull_mask(crop_landmarks, size), crop_landmarks.astype(np.float32), matrix


# The JPEG reductions a stored frame can be decoded at (libjpeg's DCT scaling), largest first.
REDUCTIONS = (8, 4, 2)


def crop_scale(matrix: np.ndarray) -> float:
    """Crop pixels per frame pixel of a similarity transform (< 1: the crop shrinks the face)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:, :2]))))


def decode_reduction(matrix: np.ndarray) -> int:
    """The largest reduction (8, 4, 2 or 1) a frame can be decoded at without the crop enlarging
    what was decoded: where the crop shrinks the face r times or more, decoding at 1/r costs a
    fraction of a full decode (and filters before the warp shrinks, where a full-size warp aliases)."""
    scale = crop_scale(matrix)
    return next((r for r in REDUCTIONS if scale * r <= 1.0), 1)


def reduced_matrix(matrix: np.ndarray, reduction: int) -> np.ndarray:
    """`matrix` (frame pixels -> crop) for the frame decoded at 1/`reduction`: a reduced pixel x
    covers frame pixels r*x .. r*x + r - 1, so its centre is the frame's r*x + (r - 1) / 2."""
    if reduction == 1:
        return matrix
    to_frame = np.array([[reduction, 0.0, (reduction - 1) / 2], [0.0, reduction, (reduction - 1) / 2], [0.0, 0.0, 1.0]])
    return np.asarray(matrix, dtype=np.float64) @ to_frame
