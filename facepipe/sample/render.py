"""Rendering: a face crop under pose, lighting and occluders, as frames, masks and an mp4."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facepipe.media import write_video
from facepipe.sample.faces import SAMPLE_FRAME_SIZE, face_ellipse_mask, square_face
from facepipe.sample.head import HeadPose, head_motion, pose_sampling_maps
from facepipe.sample.lighting import Lighting, apply_lighting, lighting_changes
from facepipe.sample.occluders import OccluderPlacement, Sprite, make_sprites, occluder_schedule, place_occluder

# Frame rate of the sample clips.
SAMPLE_FPS = 25


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
