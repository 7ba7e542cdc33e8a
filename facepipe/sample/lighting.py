"""Lighting: gain, gamma and a drifting coloured gradient applied to a rendered frame."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Lighting:
    """Photometric change for one frame: out = gain * in ** gamma * (1 + gradient * ramp * tint)."""

    gain: float = 1.0
    gamma: float = 1.0
    gradient: float = 0.0  # brightness change from the frame centre to its edge along the ramp
    gradient_angle_deg: float = 0.0  # direction in which the ramp rises
    tint_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel weight of the gradient


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
