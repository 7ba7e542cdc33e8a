"""Occluders: hand and microphone sprites, when and where they appear, and how much of the face
they may hide."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# At most this fraction of the face (FACE_ELLIPSE_* in faces.py) is hidden, so FaceMesh still finds it.
MAX_FACE_COVERAGE = 0.28


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
