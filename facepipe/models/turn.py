"""Synthetic head turns: an aligned face warped as if the head had turned left or right.

The swap turns only as far as the identity's own faces do (docs/swap_quality.md: german_news's
video turns -4..7 deg, its targets 2.5..21.6; obama's -6..20, vox's 11..37), and mirroring only
makes the range symmetric. A face's FaceMesh points carry depth, so each face can be turned in 3D
about a vertical axis and the image moved with its points (as 3D face-profiling augmentation does
for pose-robust face models): the nose moves across the cheeks, the far cheek narrows, the near
one widens. The turned points are aligned again on their own five points, as the faces asset
aligns a real turned face. The image follows the points through a thin-plate spline (smooth
between them), with a ring just outside the face outline carried along so the background beside
the cheek moves with it instead of tearing, and the crop's border fixed.

Plain functions on numpy arrays (SciPy's RBF interpolator and scikit-image's similarity estimate);
``facepipe.models.augment`` draws the angles and composes the grids with its own warps, so a
turned face is resampled once.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import RBFInterpolator
from skimage.transform import SimilarityTransform

from facepipe.align import five_points
from facepipe.landmarks import detect_landmarks

MESH_POINTS = 468  # FaceMesh's face points (the 10 after them are the irises)
# The face outline (MediaPipe FACEMESH_FACE_OVAL), for the ring carried beside it.
FACE_OVAL = (10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251, 284, 288,
             297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454)
RING = 0.2  # the ring lies this share of the centre-to-outline distance outside the outline
FOLLOW_EVERY = 3  # every 3rd face point steers the spline (156 of 468: ~6 ms a face at 96 px)
BORDER_ANCHORS = 9  # fixed points per side of the crop
SMOOTHING = 1.0  # the spline's smoothing, in squared crop pixels of a 256 px crop: folds near the far cheek's outline are ironed out
# Training reads turns from a table solved every 5 deg per face and interpolated between
# (``turn_table``): a spline solve is ~5 ms a face, a fifth of a training step's time when solved
# per batch. Interpolated grids lie within 0.01 px of a solve at the same angle at the median point
# and 0.6 px at the 99th percentile (the rest on the far cheek's outline, where the spline folds
# and moves by a few px from one solve to the next: tests).
ANGLE_STEP_DEG = 5.0
GRID_CELLS = 25  # the warp is evaluated at 25 x 25 points, corner to corner, and interpolated between them (smooth at that scale)


def crops_mesh(crops: np.ndarray, size: int | None = None) -> np.ndarray:
    """FaceMesh on each aligned BGR crop [N, S, S, 3] on its own: [N, 478, 3] points in pixels of the
    crop (or of the crop resized to ``size``; z, depth towards the camera negative, in the same scale
    as x), NaN where no face was found."""
    crops = np.asarray(crops)
    result = detect_landmarks([(np.ascontiguousarray(crop), None) for crop in crops])
    points = result.points.astype(np.float64) * ((size or crops.shape[1]) / crops.shape[1])
    points[~result.detected] = np.nan
    return points


def turned_points(points: np.ndarray, angle: float) -> np.ndarray:
    """[478, 2] where the [478, 3] points of an aligned face lie once the head has turned by
    ``angle`` radians about a vertical axis through its centre, aligned again on its own five points
    (least-squares similarity onto the unturned five points, as the crop was aligned)."""
    centre = points[:MESH_POINTS].mean(axis=0)
    cos, sin = np.cos(angle), np.sin(angle)
    x = centre[0] + (points[:, 0] - centre[0]) * cos - (points[:, 2] - centre[2]) * sin
    turned = np.stack([x, points[:, 1]], axis=1)
    realign = SimilarityTransform.from_estimate(five_points(turned), five_points(points))
    if not realign:
        raise ValueError("degenerate landmarks: cannot align the turned face")
    return realign(turned)


def turn_grid(points: np.ndarray, angle: float, size: int, cells: int = GRID_CELLS) -> np.ndarray:
    """[cells, cells, 2] read points that turn the face of a ``size`` px crop with FaceMesh points
    [478, 3] (crop pixels) by ``angle`` radians: at ``cells`` x ``cells`` evenly spaced points from
    corner to corner of the turned face, where to read the crop (grid_sample's normalised x, y, -1 to
    1 across the crop; ``facepipe.models.augment.compose_grids`` interpolates between them)."""
    source = points[:, :2]
    target = turned_points(points, angle)
    steer = np.arange(0, MESH_POINTS, FOLLOW_EVERY)
    oval = list(FACE_OVAL)
    centre = source[:MESH_POINTS].mean(axis=0)
    ring_source = source[oval] + RING * (source[oval] - centre)
    ring_target = ring_source + (target[oval] - source[oval])
    edge = np.linspace(0.0, size, BORDER_ANCHORS)
    border = np.array([(u, v) for u in edge for v in edge if u in (0.0, size) or v in (0.0, size)])
    # Backward map: for a point of the turned face, where it was in the crop.
    moved = np.concatenate([target[steer], ring_target, border])
    origin = np.concatenate([source[steer], ring_source, border])
    spline = RBFInterpolator(moved, origin - moved, kernel="thin_plate_spline", smoothing=SMOOTHING * (size / 256) ** 2)
    spaced = np.linspace(0.0, size, cells)
    grid_x, grid_y = np.meshgrid(spaced, spaced)
    queries = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    read = queries + spline(queries)
    return (read * 2.0 / size - 1.0).reshape(cells, cells, 2)


def table_angles(max_deg: float) -> np.ndarray:
    """The angles (radians) a turn table holds: evenly from -``max_deg`` to ``max_deg``, at most
    ANGLE_STEP_DEG apart."""
    steps = 2 * int(np.ceil(max_deg / ANGLE_STEP_DEG)) + 1
    return np.radians(np.linspace(-max_deg, max_deg, steps))


def turn_table(points: np.ndarray, max_deg: float, size: int) -> np.ndarray:
    """[N, K, c, c, 2] float32 ``turn_grid``s of the faces with FaceMesh points [N, 478, 3] at each of
    ``table_angles(max_deg)``; NaN for faces without points or whose five points cannot be aligned
    (those are never turned)."""
    return turn_grids(points, table_angles(max_deg), size)


def turn_grids(points: np.ndarray, angles: np.ndarray, size: int) -> np.ndarray:
    """[N, K, c, c, 2] float32 ``turn_grid``s of the faces with FaceMesh points [N, 478, 3] at each of
    ``angles`` [K] (radians); NaN for faces without points or whose five points cannot be aligned."""
    table = np.full((len(points), len(angles), GRID_CELLS, GRID_CELLS, 2), np.nan, dtype=np.float32)
    for face, face_points in enumerate(points):
        if np.isfinite(face_points).all():
            try:
                table[face] = [turn_grid(face_points, angle, size) for angle in angles]
            except ValueError:  # degenerate five points (turned_points): this face stays unturned
                pass
    return table


def interpolated_grids(table: np.ndarray, angles: np.ndarray, max_deg: float) -> np.ndarray:
    """[N, c, c, 2] turn grids at ``angles`` [N] (radians, within ±``max_deg``), each interpolated
    linearly between the two nearest angles of its face's row of a turn table [N, K, c, c, 2]."""
    steps = table.shape[1]
    if steps == 1:
        return table[:, 0]
    position = (np.asarray(angles, dtype=np.float64) / np.radians(max_deg) + 1.0) / 2.0 * (steps - 1)
    low = np.clip(np.floor(position).astype(int), 0, steps - 2)
    weight = (position - low)[:, None, None, None]
    rows = np.arange(len(table))
    return (table[rows, low] * (1.0 - weight) + table[rows, low + 1] * weight).astype(np.float32)
