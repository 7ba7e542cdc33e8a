"""Head pose: an out-of-plane turn of the face crop over a depth relief, plus in-plane motion."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facepipe.sample.faces import FACE_ELLIPSE_CENTRE

# Pinhole camera for the out-of-plane rotation: focal length and plane distance in frame sizes.
# Equal values make the unrotated plane project onto itself.
CAMERA_DISTANCE = 1.6
# Depth relief (fractions of the frame size, towards the camera): a broad dome for the head and a
# narrow ridge for the nose. Slope x sin(25 deg) stays well below 1, so the warp never folds over.
HEAD_DOME = (0.20, 0.20, 0.26)  # height, sigma_x, sigma_y around the face centre
NOSE_RIDGE = (0.06, 0.032, 0.065, 0.51)  # height, sigma_x, sigma_y, centre y
RELIEF_NEWTON_STEPS = 5
# The warp is solved exactly every MAP_STEP pixels and interpolated in between: at most 0.5 px off
# (beside the nose, where the relief bends most), a quarter of the cost of MAP_STEP = 2.
MAP_STEP = 4


@dataclass(frozen=True)
class HeadPose:
    """Where the head is in one frame. Angles in degrees, shifts in fractions of the frame size."""

    yaw_deg: float = 0.0  # positive turns the nose towards the image right
    pitch_deg: float = 0.0  # positive tilts the nose towards the image bottom
    roll_deg: float = 0.0  # in-plane, positive is counter-clockwise on screen
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0


def rotation_matrix(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """3x3 rotation in camera coordinates (x right, y down, z away from the camera): yaw, then pitch.

    Signs follow `HeadPose`: a point in front of the face plane (towards the camera) moves right
    for positive yaw and down for positive pitch.
    """
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    about_vertical = np.array([[np.cos(yaw), 0.0, -np.sin(yaw)], [0.0, 1.0, 0.0], [np.sin(yaw), 0.0, np.cos(yaw)]])
    about_horizontal = np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(pitch), -np.sin(pitch)], [0.0, np.sin(pitch), np.cos(pitch)]]
    )
    return about_horizontal @ about_vertical


def plane_rotation_homography(yaw_deg: float, pitch_deg: float, size: int) -> np.ndarray:
    """3x3 homography of the frame plane rotated about its centre in 3D, seen by a pinhole camera.

    The plane sits at distance d = focal length in front of the camera, so without rotation it
    maps onto itself; rotating it foreshortens the side that turns away.
    """
    focal = CAMERA_DISTANCE * size
    centre = size / 2
    camera = np.array([[focal, 0.0, centre], [0.0, focal, centre], [0.0, 0.0, 1.0]])
    rotation = rotation_matrix(yaw_deg, pitch_deg)
    plane_to_camera = np.column_stack([rotation[:, 0], rotation[:, 1], [0.0, 0.0, focal]])
    to_centre = np.array([[1.0, 0.0, -centre], [0.0, 1.0, -centre], [0.0, 0.0, 1.0]])
    return camera @ plane_to_camera @ to_centre


def face_relief(x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Height (pixels, towards the camera) of the head surface above the frame plane at (x, y)."""
    u, v = x / size - FACE_ELLIPSE_CENTRE[0], y / size - FACE_ELLIPSE_CENTRE[1]
    dome_height, dome_sx, dome_sy = HEAD_DOME
    nose_height, nose_sx, nose_sy, nose_y = NOSE_RIDGE
    dome = dome_height * np.exp(-0.5 * ((u / dome_sx) ** 2 + (v / dome_sy) ** 2))
    nose_v = y / size - nose_y
    nose = nose_height * np.exp(-0.5 * ((u / nose_sx) ** 2 + (nose_v / nose_sy) ** 2))
    return (dome + nose) * size


def project_rotated_relief(x: np.ndarray, y: np.ndarray, pose: HeadPose, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the face-crop point (x, y) lands after the out-of-plane rotation (before in-plane motion).

    The point is lifted onto the relief, rotated about the face centre, and projected; its height
    is taken back out after the rotation so that an unrotated frame is the photo itself. With a
    flat relief this is exactly `plane_rotation_homography`.
    """
    focal = CAMERA_DISTANCE * size
    centre = size / 2
    height = face_relief(x, y, size)
    points = np.stack([x - centre, y - centre, -height])
    rotated = np.tensordot(rotation_matrix(pose.yaw_deg, pose.pitch_deg), points, axes=1)
    depth = rotated[2] + height + focal
    return focal * rotated[0] / depth + centre, focal * rotated[1] / depth + centre


def in_plane_matrix(pose: HeadPose, size: int) -> np.ndarray:
    """3x3 similarity (roll and scale about the frame centre, then shift)."""
    centre = size / 2
    matrix = cv2.getRotationMatrix2D((centre, centre), pose.roll_deg, pose.scale)
    matrix[:, 2] += (pose.shift_x * size, pose.shift_y * size)
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def apply_homography(matrix: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2]
    return (
        (matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]) / w,
        (matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]) / w,
    )


def invert_relief_projection(
    target_x: np.ndarray, target_y: np.ndarray, pose: HeadPose, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The face-crop points that `project_rotated_relief` sends onto the target points.

    The projection has no closed-form inverse. Newton's method (finite-difference Jacobian)
    started from the flat homography's inverse converges in a few steps because the relief is a
    smooth, non-folding displacement of the plane.
    """
    flat_inverse = np.linalg.inv(plane_rotation_homography(pose.yaw_deg, pose.pitch_deg, size))
    x, y = apply_homography(flat_inverse, target_x, target_y)
    step = 0.25  # pixels; the relief varies over tens of pixels
    for _ in range(RELIEF_NEWTON_STEPS):
        landed_x, landed_y = project_rotated_relief(x, y, pose, size)
        right_x, right_y = project_rotated_relief(x + step, y, pose, size)
        down_x, down_y = project_rotated_relief(x, y + step, pose, size)
        dxx, dyx = (right_x - landed_x) / step, (right_y - landed_y) / step
        dxy, dyy = (down_x - landed_x) / step, (down_y - landed_y) / step
        error_x, error_y = landed_x - target_x, landed_y - target_y
        determinant = dxx * dyy - dxy * dyx
        x = x - (dyy * error_x - dxy * error_y) / determinant
        y = y - (dxx * error_y - dyx * error_x) / determinant
    return x, y


def pose_sampling_maps(pose: HeadPose, size: int) -> tuple[np.ndarray, np.ndarray]:
    """remap() maps: for every output pixel, the face-crop pixel that lands there under `pose`.

    The mapping is smooth, so it is solved on a grid every `MAP_STEP` pixels (which includes the
    last row and column) and interpolated bilinearly in between.
    """
    coarse = np.arange(0, size + MAP_STEP, MAP_STEP, dtype=np.float64)
    coarse_y, coarse_x = np.meshgrid(coarse, coarse, indexing="ij")
    target_x, target_y = apply_homography(np.linalg.inv(in_plane_matrix(pose, size)), coarse_x, coarse_y)
    source_x, source_y = invert_relief_projection(target_x, target_y, pose, size)
    fine = np.arange(size, dtype=np.float32) / MAP_STEP
    fine_y, fine_x = np.meshgrid(fine, fine, indexing="ij")
    map_x = cv2.remap(source_x.astype(np.float32), fine_x, fine_y, cv2.INTER_LINEAR)
    map_y = cv2.remap(source_y.astype(np.float32), fine_x, fine_y, cv2.INTER_LINEAR)
    return map_x, map_y


def head_motion(n_frames: int, seed: int) -> list[HeadPose]:
    """A smooth pose trajectory over the clip: yaw sweeps ±25°, pitch ±15°, plus small in-plane motion.

    Each component is a sinusoid with a seeded phase and a fixed number of cycles per clip, so a
    10-frame clip turns as far as a 100-frame one; yaw makes one full cycle and reaches both ends.
    """
    phases = np.random.default_rng(seed).uniform(0.0, 1.0, size=6)
    t = np.arange(n_frames) / max(n_frames, 1)

    def wave(cycles: float, phase: float) -> np.ndarray:
        return np.sin(2 * np.pi * (cycles * t + phase))

    yaw, pitch = 25 * wave(1.0, phases[0]), 15 * wave(1.5, phases[1])
    roll, scale = 7 * wave(0.75, phases[2]), 1 + 0.05 * wave(0.5, phases[3])
    shift_x, shift_y = 0.035 * wave(1.0, phases[4]), 0.025 * wave(1.25, phases[5])
    return [
        HeadPose(float(yaw[i]), float(pitch[i]), float(roll[i]), float(shift_x[i]), float(shift_y[i]), float(scale[i]))
        for i in range(n_frames)
    ]
