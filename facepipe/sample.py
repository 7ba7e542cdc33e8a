"""Builds the embedded sample data: synthetic talking-head clips of two public-domain faces.

The pipeline needs an identity and a target to run end to end without any user media, and its
tests need short clips whose ground truth is known. Both come from the two public-domain photos
that ship inside installed dependencies: Grace Hopper (matplotlib, US Navy photo) and Eileen
Collins (scikit-image's ``astronaut``, NASA photo). Nothing is downloaded.

Each frame is the face photo re-rendered with a head pose, an in-plane motion and a lighting:

* out-of-plane turns (yaw/pitch): the face crop is treated as a plane through the face centre,
  rotated in 3D and projected with a pinhole camera (a homography), plus a smooth depth relief
  (head dome + nose ridge) rotated with it, so the nose really moves relative to the eyes the way
  it does in a turning head (a pure plane keeps the nose between the eyes);
* in-plane motion: a small shift, roll and scale;
* lighting: gain, gamma and a coloured linear gradient whose direction drifts over time;
* for the target, moving occluders (a hand, a microphone) drawn over part of the face in part of
  the frames, never covering more than ``MAX_FACE_COVERAGE`` of the face so FaceMesh still finds it.

Layout written by ``build_sample(data_root)``::

    data_root/identities/hopper/hopper_turn.mp4        25 fps, 75 frames, 352x352
    data_root/identities/hopper/hopper_left.jpg        still, turned left, warm light
    data_root/identities/hopper/hopper_up.png          still, looking up, cool light
    data_root/targets/astronaut/astronaut_talk.mp4     25 fps, 100 frames, hand + microphone
    data_root/targets/astronaut/astronaut_mic.jpg      still with a microphone in front
    data_root/targets/astronaut/astronaut_side.png     still, turned, no occluder
    data_root/sample_truth/astronaut/occluders.npz     ground-truth occluder masks

``occluders.npz`` holds one array per file of the target folder, keyed by the file name
(``"astronaut_talk.mp4"``, ``"astronaut_mic.jpg"``, ...): uint8 of shape
``[n_frames, height, width]`` with values {0, 1} (1 = occluder pixel) at the full frame resolution;
row ``i`` is the mask of frame ``i`` in decoding order (stills have one row). So the mask of
(file, frame) is ``np.load(path)[file][frame]``. It lives outside the partition folders on purpose:
it is ground truth for evaluating XSeg, not media.

Every file is written atomically (temporary file in the same folder, then ``os.replace``) and only
when its bytes change, so rebuilding leaves modification times and the media content hash alone.
Rendering is deterministic (seeded numpy generators, no threads racing on shared state) and the
writers are too: 'mp4v' through OpenCV's FFmpeg backend runs single-threaded with no time stamps in the
file, JPEG/PNG encoding is deterministic, and the npz is zipped with fixed member dates.
"""

from __future__ import annotations

import argparse
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SAMPLE_FRAME_SIZE = 352
SAMPLE_FPS = 25
IDENTITY_KEY = "hopper"
TARGET_KEY = "astronaut"
IDENTITY_VIDEO_FRAMES = 75  # 3 s at 25 fps
TARGET_VIDEO_FRAMES = 100  # 4 s at 25 fps

# Bounding boxes (x0, y0, x1, y1, pixels) of the 478 FaceMesh landmarks on the source photos,
# measured once. Hard-coded so that cropping does not depend on a detector run.
HOPPER_FACE_BOX = (173, 132, 356, 334)
ASTRONAUT_FACE_BOX = (179, 71, 271, 177)

# A face crop is square, centred on the face box, with the box's longer side this fraction of it:
# enough background around the face for turns and shifts to stay inside the picture.
FACE_FRACTION = 0.5
# The face (landmark hull) in a face crop, approximated by an ellipse: centre and semi-axes as
# fractions of the crop side. Used to keep occluders from hiding too much of the face.
FACE_ELLIPSE_CENTRE = (0.5, 0.5)
FACE_ELLIPSE_AXES = (0.22, 0.25)
MAX_FACE_COVERAGE = 0.28

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


@dataclass(frozen=True)
class Lighting:
    """Photometric change for one frame: out = gain * in ** gamma * (1 + gradient * ramp * tint)."""

    gain: float = 1.0
    gamma: float = 1.0
    gradient: float = 0.0  # brightness change from the frame centre to its edge along the ramp
    gradient_angle_deg: float = 0.0  # direction in which the ramp rises
    tint_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel weight of the gradient


@dataclass(frozen=True)
class OccluderPlacement:
    """An occluder sprite's anchor relative to the face centre (fractions of the frame size)."""

    kind: str  # "hand" or "microphone"
    offset_x: float
    offset_y: float
    angle_deg: float = 0.0


@dataclass(frozen=True)
class Sprite:
    """An occluder drawn on a frame-sized canvas, anchored at the canvas centre."""

    bgr: np.ndarray  # float32 [S, S, 3] in [0, 1]
    mask: np.ndarray  # uint8 [S, S] in {0, 1}


# --------------------------------------------------------------------------- source photos


def hopper_image() -> np.ndarray:
    """Grace Hopper's portrait from matplotlib's sample data, BGR uint8 (600x512)."""
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path} is missing or unreadable: reinstall matplotlib, which ships it")
    return image


def astronaut_image() -> np.ndarray:
    """Eileen Collins' portrait from scikit-image's sample data, BGR uint8 (512x512)."""
    from skimage import data

    return np.ascontiguousarray(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))


def face_crop(image: np.ndarray, face_box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Square crop centred on `face_box`, the box's longer side `FACE_FRACTION` of it, at `size` px."""
    x0, y0, x1, y1 = face_box
    side = max(x1 - x0, y1 - y0) / FACE_FRACTION
    scale = size / side
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    matrix = np.array(
        [[scale, 0.0, size / 2 - scale * centre_x], [0.0, scale, size / 2 - scale * centre_y]],
        dtype=np.float64,
    )
    # Reflection fills whatever part of the square lies outside the photo.
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def hopper_face(size: int = SAMPLE_FRAME_SIZE) -> np.ndarray:
    """Grace Hopper's face crop (BGR uint8, `size` square), ready for `render_head_video`."""
    return face_crop(hopper_image(), HOPPER_FACE_BOX, size)


def astronaut_face(size: int = SAMPLE_FRAME_SIZE) -> np.ndarray:
    """Eileen Collins' face crop (BGR uint8, `size` square), ready for `render_head_video`."""
    return face_crop(astronaut_image(), ASTRONAUT_FACE_BOX, size)


# --------------------------------------------------------------------------- head motion


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


def face_ellipse_mask(size: int) -> np.ndarray:
    """uint8 {0, 1} approximate face region of a face crop (see FACE_ELLIPSE_*)."""
    mask = np.zeros((size, size), dtype=np.uint8)
    centre = (round(FACE_ELLIPSE_CENTRE[0] * size), round(FACE_ELLIPSE_CENTRE[1] * size))
    axes = (round(FACE_ELLIPSE_AXES[0] * size), round(FACE_ELLIPSE_AXES[1] * size))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    return mask


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


def lighting_changes(n_frames: int, seed: int) -> list[Lighting]:
    """Slow lighting drift: gain ±15 %, gamma ±18 %, and a warm/cool gradient that turns around."""
    phases = np.random.default_rng(seed + 1).uniform(0.0, 1.0, size=5)
    t = np.arange(n_frames) / max(n_frames, 1)
    gain = 1 + 0.15 * np.sin(2 * np.pi * (0.8 * t + phases[0]))
    gamma = 1 + 0.18 * np.sin(2 * np.pi * (0.6 * t + phases[1]))
    gradient = 0.12 + 0.12 * np.sin(2 * np.pi * (0.5 * t + phases[2]))
    angle = 360 * (0.5 * t + phases[3])
    warmth = 0.5 * np.sin(2 * np.pi * (0.4 * t + phases[4]))
    return [
        Lighting(
            float(gain[i]),
            float(gamma[i]),
            float(gradient[i]),
            float(angle[i]),
            (float(1 - warmth[i]), 1.0, float(1 + warmth[i])),
        )
        for i in range(n_frames)
    ]


def apply_lighting(frame: np.ndarray, light: Lighting) -> np.ndarray:
    """uint8 BGR frame under `light` (see `Lighting`)."""
    size_y, size_x = frame.shape[:2]
    angle = np.radians(light.gradient_angle_deg)
    grid_y, grid_x = np.mgrid[0:size_y, 0:size_x].astype(np.float32)
    ramp = ((grid_x / size_x - 0.5) * np.cos(angle) + (grid_y / size_y - 0.5) * np.sin(angle)) * 2
    tint = np.asarray(light.tint_bgr, dtype=np.float32)
    factor = 1 + light.gradient * ramp[..., None] * tint
    # gain * x ** gamma through a lookup table: a per-pixel power is the slowest part of a frame.
    curve = (light.gain * (np.arange(256) / 255) ** light.gamma * 255).astype(np.float32)
    lit = cv2.LUT(frame, curve) * factor
    return np.clip(np.rint(lit), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- occluders


def smooth_noise(size: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size] noise with features about `cell` pixels across, zero mean, unit-ish std."""
    coarse = rng.standard_normal((size // cell + 2, size // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def rounded_shading(mask: np.ndarray, radius: float) -> np.ndarray:
    """float32 shading that darkens towards the silhouette, so a flat shape reads as a rounded one."""
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    return 0.55 + 0.45 * np.sqrt(np.clip(inside / radius, 0.0, 1.0))


def directional_light(size: int, angle_deg: float, strength: float) -> np.ndarray:
    angle = np.radians(angle_deg)
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return 1 + strength * (grid_x * np.cos(angle) + grid_y * np.sin(angle))


def hand_sprite(size: int, rng: np.random.Generator) -> Sprite:
    """A hand seen from the palm side, fingers up: palm ellipse, four finger bars and a thumb.

    The anchor (canvas centre) sits at the base of the fingers.
    """
    mask = np.zeros((size, size), dtype=np.uint8)
    centre = size / 2

    def point(dx: float, dy: float) -> tuple[int, int]:
        return round(centre + dx * size), round(centre + dy * size)

    cv2.ellipse(mask, point(0, 0.075), (round(0.095 * size), round(0.11 * size)), 0, 0, 360, 1, -1)
    finger_width = max(3, round(0.036 * size))
    for base_x, length, lean_deg in ((-0.064, 0.12, -9), (-0.021, 0.15, -3), (0.022, 0.16, 3), (0.064, 0.135, 9)):
        lean = np.radians(lean_deg)
        tip = (base_x + length * np.sin(lean), -length * np.cos(lean))
        cv2.line(mask, point(base_x, 0.0), point(*tip), 1, finger_width)
    cv2.line(mask, point(0.07, 0.11), point(0.16, 0.03), 1, max(3, round(0.04 * size)))

    skin = np.array([0.42, 0.55, 0.78], dtype=np.float32)  # BGR, a tan distinct from both faces
    texture = 1 + 0.07 * smooth_noise(size, max(2, size // 24), rng) + 0.03 * smooth_noise(size, 2, rng)
    shade = rounded_shading(mask, 0.03 * size) * directional_light(size, 225, 0.5) * texture
    bgr = np.clip(skin * shade[..., None], 0, 1)
    # Palm creases and the gaps where fingers meet the palm: darker lines, part of the hand.
    crease = np.zeros((size, size), dtype=np.uint8)
    cv2.ellipse(crease, point(0.0, 0.06), (round(0.07 * size), round(0.05 * size)), 0, 200, 330, 1, 1)
    cv2.ellipse(crease, point(0.02, 0.13), (round(0.06 * size), round(0.08 * size)), 0, 190, 260, 1, 1)
    for gap_x in (-0.042, 0.0, 0.043):
        cv2.line(crease, point(gap_x, -0.005), point(gap_x, -0.035), 1, 1)
    bgr[(crease == 1) & (mask == 1)] *= 0.7
    return Sprite(bgr.astype(np.float32), mask)


def microphone_sprite(size: int, rng: np.random.Generator) -> Sprite:
    """A hand-held microphone, head up: meshed round head on a dark handle with a metal collar.

    The anchor (canvas centre) sits at the centre of the head.
    """
    centre = size / 2
    radius = 0.075 * size
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = (grid_x - centre) / radius, (grid_y - centre) / radius
    head = (dx**2 + dy**2) <= 1.0

    handle_half_width = 0.024 * size
    handle_top, handle_bottom = centre + 0.8 * radius, centre + 0.42 * size
    across = (grid_x - centre) / handle_half_width
    handle = (np.abs(across) <= 1.0) & (grid_y >= handle_top) & (grid_y <= handle_bottom)
    collar = (np.abs(across) <= 1.25) & (grid_y >= handle_top) & (grid_y <= handle_top + 0.05 * size)

    # Head: a sphere lit from the upper left, wire mesh as dark grid lines, a specular spot.
    sphere = np.sqrt(np.clip(1 - dx**2 - dy**2, 0, 1))
    lambert = np.clip(0.35 + 0.65 * (sphere * 0.8 - 0.35 * dx - 0.35 * dy), 0.15, 1.0)
    pitch = max(3.0, 0.014 * size)
    mesh = (np.mod(grid_x - centre, pitch) < 1.0) | (np.mod(grid_y - centre, pitch) < 1.0)
    head_bgr = np.array([0.62, 0.62, 0.66], dtype=np.float32) * lambert[..., None]
    head_bgr[mesh] *= 0.55
    head_bgr += 0.35 * np.exp(-((dx + 0.4) ** 2 + (dy + 0.45) ** 2) / 0.03)[..., None]

    # Handle and collar: cylinders, shaded across their width, with a highlight stripe.
    cylinder = np.sqrt(np.clip(1 - across**2, 0, 1)) + 0.5 * np.exp(-((across + 0.45) ** 2) / 0.02)
    handle_bgr = np.array([0.13, 0.13, 0.15], dtype=np.float32) * (0.5 + cylinder)[..., None]
    collar_bgr = np.array([0.55, 0.56, 0.6], dtype=np.float32) * (0.35 + 0.8 * cylinder)[..., None]

    grain = (1 + 0.04 * smooth_noise(size, 2, rng))[..., None]
    bgr = np.zeros((size, size, 3), dtype=np.float32)
    bgr[handle] = handle_bgr[handle]
    bgr[collar] = collar_bgr[collar]
    bgr[head] = head_bgr[head]
    mask = (head | handle | collar).astype(np.uint8)
    return Sprite(np.clip(bgr * grain, 0, 1).astype(np.float32), mask)


def make_sprites(size: int, seed: int) -> dict[str, Sprite]:
    rng = np.random.default_rng(seed + 2)
    return {"hand": hand_sprite(size, rng), "microphone": microphone_sprite(size, rng)}


def occluder_schedule(n_frames: int) -> list[OccluderPlacement | None]:
    """Which occluder is where in each frame: clear, a hand sweeping across the lower face, clear,
    a microphone rising to the chin and swaying, clear. Timed as fractions of the clip so a
    10-frame clip has them too."""
    placements: list[OccluderPlacement | None] = []
    for index in range(n_frames):
        t = (index + 0.5) / n_frames
        if 0.12 <= t < 0.48:
            u = (t - 0.12) / 0.36
            placements.append(OccluderPlacement("hand", -0.42 + 0.6 * u, 0.2 - 0.05 * np.sin(np.pi * u), 35 - 50 * u))
        elif 0.58 <= t < 0.94:
            u = (t - 0.58) / 0.36
            rise = min(1.0, 3 * u) ** 2 * (3 - 2 * min(1.0, 3 * u))  # smoothstep over the first third
            placements.append(
                OccluderPlacement(
                    "microphone", 0.1 + 0.06 * np.sin(2 * np.pi * u), 0.6 - 0.42 * rise, -12 + 10 * np.sin(np.pi * u)
                )
            )
        else:
            placements.append(None)
    return placements


def place_sprite(sprite: Sprite, anchor_xy: tuple[float, float], angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The sprite's colour and mask on the frame, rotated about its anchor which lands on `anchor_xy`."""
    size = sprite.mask.shape[0]
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle_deg, 1.0)
    matrix[:, 2] += (anchor_xy[0] - size / 2, anchor_xy[1] - size / 2)
    mask = cv2.warpAffine(sprite.mask, matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    bgr = cv2.warpAffine(sprite.bgr, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return bgr, mask


def place_occluder(
    sprite: Sprite, placement: OccluderPlacement, face_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Place the occluder relative to the face, moved away from the face centre as far as needed
    to cover at most `MAX_FACE_COVERAGE` of the face (so FaceMesh keeps finding it)."""
    size = face_mask.shape[0]
    rows, cols = np.nonzero(face_mask)
    if len(rows) == 0:
        raise ValueError("the face left the frame: no face pixels to place the occluder against")
    face_centre = np.array([cols.mean(), rows.mean()])
    offset = np.array([placement.offset_x, placement.offset_y]) * size
    anchor = face_centre + offset
    # Retreat along the offset; an occluder placed on the face centre retreats downwards.
    away = offset / np.linalg.norm(offset) if np.linalg.norm(offset) > 0 else np.array([0.0, 1.0])
    face_area = len(rows)
    for _ in range(100):
        bgr, mask = place_sprite(sprite, (float(anchor[0]), float(anchor[1])), placement.angle_deg)
        if np.count_nonzero(mask & face_mask) <= MAX_FACE_COVERAGE * face_area:
            break
        anchor = anchor + away * 0.01 * size
    return bgr, mask


# --------------------------------------------------------------------------- rendering


def render_frame(
    face_bgr: np.ndarray,
    pose: HeadPose,
    light: Lighting,
    occluder: OccluderPlacement | None = None,
    sprites: dict[str, Sprite] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One frame (BGR uint8) of the face crop under pose, lighting and occluder, and its occluder mask.

    The occluder is drawn after the lighting so that its own shading stays its own; the mask is
    uint8 {0, 1} at the frame's resolution.
    """
    size = face_bgr.shape[0]
    map_x, map_y = pose_sampling_maps(pose, size)
    frame = cv2.remap(face_bgr, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    frame = apply_lighting(frame, light)
    mask = np.zeros((size, size), dtype=np.uint8)
    if occluder is not None:
        if sprites is None or occluder.kind not in sprites:
            raise ValueError(f"no sprite for occluder kind {occluder.kind!r}: pass make_sprites(size, seed)")
        face_mask = cv2.remap(face_ellipse_mask(size), map_x, map_y, cv2.INTER_NEAREST, borderValue=0)
        occluder_bgr, mask = place_occluder(sprites[occluder.kind], occluder, face_mask)
        covered = mask == 1
        frame[covered] = np.clip(np.rint(occluder_bgr[covered] * 255), 0, 255).astype(np.uint8)
    return frame, mask


def square_face(face_bgr: np.ndarray, size: int) -> np.ndarray:
    """The face crop at `size`; refuses images that are not a square face crop."""
    height, width = face_bgr.shape[:2]
    if face_bgr.ndim != 3 or face_bgr.shape[2] != 3 or face_bgr.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 image, got shape {face_bgr.shape} dtype {face_bgr.dtype}")
    if abs(height - width) > 0.02 * max(height, width):
        raise ValueError(
            f"expected a square face crop with the face centred, got {width}x{height}: "
            "use hopper_face(), astronaut_face() or face_crop(image, face_box, size)"
        )
    if (height, width) == (size, size):
        return face_bgr
    return cv2.resize(face_bgr, (size, size), interpolation=cv2.INTER_AREA if height > size else cv2.INTER_CUBIC)


def render_head_frames(
    face_bgr: np.ndarray, n_frames: int, size: int = SAMPLE_FRAME_SIZE, occluders: bool = False, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames of a moving, relit head (and occluders if asked) and their masks [n, size, size] uint8 {0, 1}."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    face = square_face(face_bgr, size)
    poses, lights = head_motion(n_frames, seed), lighting_changes(n_frames, seed)
    placements = occluder_schedule(n_frames) if occluders else [None] * n_frames
    sprites = make_sprites(size, seed) if occluders else None
    frames, masks = [], np.zeros((n_frames, size, size), dtype=np.uint8)
    for index, (pose, light, placement) in enumerate(zip(poses, lights, placements)):
        frame, masks[index] = render_frame(face, pose, light, placement, sprites)
        frames.append(frame)
    return frames, masks


def render_head_video(
    face_bgr: np.ndarray,
    out_path: Path | str,
    n_frames: int,
    fps: int = SAMPLE_FPS,
    size: int = SAMPLE_FRAME_SIZE,
    occluders: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Write an mp4 of a moving, relit head made from a face crop; return its occluder masks.

    The masks are uint8 {0, 1}, shape [n_frames, size, size], row i for frame i (all zero
    without occluders). The file is replaced only if its bytes change.
    """
    frames, masks = render_head_frames(face_bgr, n_frames, size, occluders, seed)
    write_video(Path(out_path), frames, fps)
    return masks


# --------------------------------------------------------------------------- deterministic writers


def replace_if_changed(temporary: Path, final: Path) -> bool:
    """Move a finished temporary file over `final` unless `final` already has the same bytes.

    Returns whether `final` was (re)written. Unchanged files keep their modification time.
    """
    same_size = final.is_file() and final.stat().st_size == temporary.stat().st_size
    if same_size and final.read_bytes() == temporary.read_bytes():
        temporary.unlink()
        return False
    try:
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)  # only still there if the replace failed
    return True


def temporary_path(final: Path) -> Path:
    """A hidden temporary name beside `final`, keeping its extension (FFmpeg picks the container
    from it); hidden so folder scans never take a half-written file for media."""
    return final.with_name(f".{final.stem}.tmp{os.getpid()}{final.suffix}")


def write_bytes(path: Path, data: bytes) -> bool:
    """Atomically write `data` to `path` unless it already holds them; returns whether it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    temporary.write_bytes(data)
    return replace_if_changed(temporary, path)


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> bool:
    """Atomically write BGR frames as an 'mp4v' MP4 unless the file already holds the same bytes.

    OpenCV's FFmpeg writer leaves the encoder single-threaded and writes no creation time, so the
    same frames give the same bytes.
    """
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    temporary = temporary_path(path)
    writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        temporary.unlink(missing_ok=True)
        raise RuntimeError(
            f"OpenCV cannot open an 'mp4v' video writer for {temporary}: "
            "this opencv build lacks FFmpeg video I/O; install the opencv-python wheel from constraints.txt"
        )
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return replace_if_changed(temporary, path)


def encode_image(path: Path, image: np.ndarray) -> bytes:
    """JPEG (quality 95) or PNG bytes of a BGR image, by the extension of `path`."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path.name} as {path.suffix}")
    return encoded.tobytes()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (readable by np.load) with sorted members and fixed dates: np.savez stamps the
    current time into the zip, which would change the bytes on every build."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            array_bytes = io.BytesIO()
            np.lib.format.write_array(array_bytes, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            archive.writestr(member, array_bytes.getvalue())
    return buffer.getvalue()


def load_occluder_masks(path: Path | str) -> dict[str, np.ndarray]:
    """The ground-truth occluder masks: file name -> uint8 {0, 1} [n_frames, height, width]."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in sorted(archive.files)}


# --------------------------------------------------------------------------- the sample


IDENTITY_STILLS = {
    "hopper_left.jpg": (
        HeadPose(yaw_deg=-20, pitch_deg=5, roll_deg=4, scale=1.02),
        Lighting(gain=1.05, gamma=0.9, gradient=0.2, gradient_angle_deg=180, tint_bgr=(0.6, 1.0, 1.4)),
    ),
    "hopper_up.png": (
        HeadPose(yaw_deg=12, pitch_deg=-12, roll_deg=-5, shift_x=0.02),
        Lighting(gain=0.9, gamma=1.15, gradient=0.18, gradient_angle_deg=30, tint_bgr=(1.4, 1.0, 0.6)),
    ),
}
TARGET_STILLS = {
    "astronaut_mic.jpg": (
        HeadPose(yaw_deg=10, pitch_deg=4, roll_deg=-3),
        Lighting(gain=1.0, gamma=1.05, gradient=0.15, gradient_angle_deg=90, tint_bgr=(0.8, 1.0, 1.2)),
        OccluderPlacement("microphone", 0.08, 0.27, -8),
    ),
    "astronaut_side.png": (
        HeadPose(yaw_deg=-22, pitch_deg=-6, roll_deg=5, shift_x=-0.02),
        Lighting(gain=1.1, gamma=0.92, gradient=0.22, gradient_angle_deg=300, tint_bgr=(1.3, 1.0, 0.7)),
        None,
    ),
}
IDENTITY_SEED, TARGET_SEED = 0, 1


# A user labels some frames with an obstruction (white = visible face): every second occluded
# frame of the target video. XSeg's labels elsewhere are landmark hulls, which call an occluder
# "face"; these masks (and the synthetic occluders) teach it otherwise.
LABEL_EVERY_NTH_OCCLUDED = 2


def write_user_masks(masks_dir: Path, video: Path, frames: list[np.ndarray], occluders: np.ndarray, record) -> list[str]:
    """The masks such a user would draw: the face's landmark hull minus the occluder."""
    from facepipe.landmarks import detect_static

    names = []
    occluded = [i for i in range(len(frames)) if occluders[i].any()]
    for i in occluded[::LABEL_EVERY_NTH_OCCLUDED]:
        points = detect_static(frames[i])
        if points is None:
            continue
        mask = np.zeros(frames[i].shape[:2], np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points[:, :2]).astype(np.int32)), 255)
        mask[occluders[i] > 0] = 0
        path = masks_dir / f"{video.stem}_{i:06d}.png"
        record(path, write_bytes(path, encode_image(path, mask)))
        names.append(path.name)
    return names


def build_sample(data_root: Path | str) -> dict:
    """Write the sample identity (hopper), target (astronaut) and the target's occluder masks.

    Returns what is there: per partition its folder and the frame count of each file, the mask
    file, and `changed`: the files this call actually (re)wrote, relative to `data_root`
    (empty when the sample was already up to date).
    """
    root = Path(data_root)
    size = SAMPLE_FRAME_SIZE
    identity_dir = root / "identities" / IDENTITY_KEY
    target_dir = root / "targets" / TARGET_KEY
    masks_path = root / "sample_truth" / TARGET_KEY / "occluders.npz"
    changed: list[Path] = []

    def record(path: Path, was_written: bool) -> None:
        if was_written:
            changed.append(path)

    hopper = hopper_face(size)
    identity_frames = {}
    video = identity_dir / f"{IDENTITY_KEY}_turn.mp4"
    frames, _ = render_head_frames(hopper, IDENTITY_VIDEO_FRAMES, size, occluders=False, seed=IDENTITY_SEED)
    record(video, write_video(video, frames, SAMPLE_FPS))
    identity_frames[video.name] = len(frames)
    for name, (pose, light) in sorted(IDENTITY_STILLS.items()):
        still, _ = render_frame(hopper, pose, light)
        record(identity_dir / name, write_bytes(identity_dir / name, encode_image(identity_dir / name, still)))
        identity_frames[name] = 1

    astronaut = astronaut_face(size)
    target_frames, target_masks = {}, {}
    video = target_dir / f"{TARGET_KEY}_talk.mp4"
    frames, masks = render_head_frames(astronaut, TARGET_VIDEO_FRAMES, size, occluders=True, seed=TARGET_SEED)
    record(video, write_video(video, frames, SAMPLE_FPS))
    target_frames[video.name], target_masks[video.name] = len(frames), masks
    sprites = make_sprites(size, TARGET_SEED)
    for name, (pose, light, placement) in sorted(TARGET_STILLS.items()):
        still, mask = render_frame(astronaut, pose, light, placement, sprites)
        record(target_dir / name, write_bytes(target_dir / name, encode_image(target_dir / name, still)))
        target_frames[name], target_masks[name] = 1, mask[None]
    record(masks_path, write_bytes(masks_path, npz_bytes(target_masks)))
    labelled = write_user_masks(target_dir / "masks", video, frames, masks, record)

    return {
        "identity": {"key": IDENTITY_KEY, "folder": str(identity_dir), "frames": identity_frames},
        "target": {"key": TARGET_KEY, "folder": str(target_dir), "frames": target_frames},
        "occluder_masks": str(masks_path),
        "user_masks": labelled,
        "frame_size": size,
        "fps": SAMPLE_FPS,
        "changed": [str(path.relative_to(root)) for path in changed],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build facepipe's sample identity and target media.")
    parser.add_argument(
        "data_root", type=Path, nargs="?", default=Path("data"), help="folder holding identities/ and targets/"
    )
    summary = build_sample(parser.parse_args(argv).data_root)
    print(f"identity {summary['identity']['folder']}: {summary['identity']['frames']}")
    print(f"target   {summary['target']['folder']}: {summary['target']['frames']}")
    print(f"occluder masks {summary['occluder_masks']}; rewritten: {summary['changed'] or 'nothing'}")


if __name__ == "__main__":
    main()
