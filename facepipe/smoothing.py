"""Temporal landmark smoothing: Savitzky–Golay along time, one contiguous run at a time.

A run is a stretch of rows from one video in which every frame has a face and consecutive
rows are at most `max_gap` source frames apart. Smoothing never crosses a file boundary, a
larger gap or a missing detection (a filter across them would blend unrelated faces), and
stills are never smoothed. The filter treats the rows of a run as equally spaced in time, so
`max_gap` should be the frame sampling step.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import savgol_filter


def contiguous_runs(
    detected: np.ndarray,
    source: np.ndarray,
    source_frame_index: np.ndarray,
    is_video: np.ndarray,
    max_gap: int | np.ndarray,
) -> list[np.ndarray]:
    """Maximal runs of row indices that may be smoothed together, in row order.

    Rows i-1 and i belong to one run when both are detected video frames of the same source
    and source_frame_index[i] - source_frame_index[i-1] is between 1 and max_gap (one value,
    or one per row: each video's own sampling step). Every
    detected video row lies in exactly one run (a lone frame is a run of length 1); stills
    and undetected rows lie in none.
    """
    detected = np.asarray(detected, dtype=bool)
    source = np.asarray(source)
    frame_index = np.asarray(source_frame_index, dtype=np.int64)
    is_video = np.asarray(is_video, dtype=bool)
    count = len(detected)
    max_gap = np.broadcast_to(np.asarray(max_gap, dtype=np.int64), (count,))
    if not (len(source) == len(frame_index) == len(is_video) == count):
        raise ValueError(
            "contiguous_runs needs one value per row in every column, got lengths "
            f"detected={count}, source={len(source)}, source_frame_index={len(frame_index)}, "
            f"is_video={len(is_video)}"
        )
    if count and max_gap.min() < 1:
        raise ValueError(f"max_gap must be at least 1 frame, got {max_gap.min()}")

    usable = detected & is_video
    runs: list[np.ndarray] = []
    start = None
    for row in range(count):
        if not usable[row]:
            if start is not None:
                runs.append(np.arange(start, row))
            start = None
            continue
        step = frame_index[row] - frame_index[row - 1] if row > 0 else 0
        continues = start is not None and source[row] == source[row - 1] and 1 <= step <= max_gap[row]
        if not continues:
            if start is not None:
                runs.append(np.arange(start, row))
            start = row
    if start is not None:
        runs.append(np.arange(start, count))
    return runs


def _check_window(window: int, order: int) -> None:
    if order < 0:
        raise ValueError(f"Savitzky-Golay order must be >= 0, got {order}")
    if window % 2 == 0 or window <= order:
        raise ValueError(
            f"Savitzky-Golay window must be odd and greater than the order ({order}), got {window}; "
            f"try {max(order + 1, window) | 1}"
        )


def window_for_run(length: int, window: int, order: int) -> int | None:
    """The window used on a run: `window`, or the largest odd window that fits a shorter run and
    is still greater than `order`; None when the run is too short to smooth."""
    fitted = window if length >= window else (length if length % 2 == 1 else length - 1)
    return fitted if fitted > order else None


def smooth_landmarks(points: np.ndarray, runs: list[np.ndarray], window: int = 7, order: int = 2) -> np.ndarray:
    """Savitzky–Golay smoothed copy of [N, P, 3] landmarks; rows outside `runs` (and runs too
    short to smooth) are returned bitwise unchanged."""
    _check_window(window, order)
    points = np.asarray(points)
    smoothed = points.copy()
    for run in runs:
        run_window = window_for_run(len(run), window, order)
        if run_window is None:
            continue
        # float64 inside the filter; cast back so the array keeps the caller's dtype.
        filtered = savgol_filter(points[run].astype(np.float64), run_window, order, axis=0, mode="interp")
        smoothed[run] = filtered.astype(points.dtype)
    return smoothed


def jitter(points: np.ndarray, runs: list[np.ndarray]) -> float:
    """Mean landmark acceleration in px/frame²: |second difference of (x, y)| averaged over every
    point and frame of every run of at least 3 frames; NaN when no run is that long."""
    accelerations = [
        np.linalg.norm(np.diff(np.asarray(points)[run, :, :2].astype(np.float64), n=2, axis=0), axis=-1).ravel()
        for run in runs
        if len(run) >= 3
    ]
    if not accelerations:
        return float("nan")
    return float(np.concatenate(accelerations).mean())
