"""Savitzky–Golay landmark smoothing per contiguous run."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import savgol_filter

from facepipe.smoothing import contiguous_runs, jitter, smooth_landmarks, window_for_run

# (source, source frame index, is_video, detected) per row, sorted as the frames asset stores them.
ROWS = [
    ("a.mp4", 0, True, True),  # 0 ┐ run
    ("a.mp4", 1, True, True),  # 1 │
    ("a.mp4", 2, True, True),  # 2 ┘
    ("a.mp4", 3, True, False),  # 3   no face: breaks the run
    ("a.mp4", 4, True, True),  # 4 ┐
    ("a.mp4", 5, True, True),  # 5 ┘
    ("a.mp4", 9, True, True),  # 6 ┐ gap of 4 > max_gap breaks
    ("a.mp4", 10, True, True),  # 7 ┘
    ("b.mp4", 11, True, True),  # 8 ┐ new file breaks, even though the index continues
    ("b.mp4", 12, True, True),  # 9 ┘
    ("photo.jpg", 0, False, True),  # 10  still: never in a run
    ("c.mp4", 0, True, True),  # 11 ┐ a gap of 2 = max_gap continues
    ("c.mp4", 2, True, True),  # 12 ┘
    ("c.mp4", 2, True, True),  # 13   index not increasing breaks
]
MAX_GAP = 2


def _columns(rows):
    source, index, is_video, detected = zip(*rows)
    return np.array(detected), np.array(source, dtype=object), np.array(index), np.array(is_video)


def _runs(rows=ROWS, max_gap=MAX_GAP):
    detected, source, index, is_video = _columns(rows)
    return contiguous_runs(detected, source, index, is_video, max_gap)


def test_runs_break_at_missing_faces_gaps_files_and_stills():
    assert [run.tolist() for run in _runs()] == [[0, 1, 2], [4, 5], [6, 7], [8, 9], [11, 12], [13]]


def test_runs_reject_bad_arguments():
    detected, source, index, is_video = _columns(ROWS)
    with pytest.raises(ValueError, match="max_gap"):
        contiguous_runs(detected, source, index, is_video, 0)
    with pytest.raises(ValueError, match="lengths"):
        contiguous_runs(detected[:-1], source, index, is_video, 1)


def test_rows_outside_runs_are_bit_identical():
    rng = np.random.default_rng(0)
    points = rng.normal(100, 20, size=(len(ROWS), 478, 3)).astype(np.float32)
    points[3] = np.nan  # the undetected row, as landmarks stores it
    runs = _runs()
    smoothed = smooth_landmarks(points, runs, window=3, order=1)
    assert smoothed.dtype == np.float32
    for row in (3, 10):  # undetected, still
        assert smoothed[row].tobytes() == points[row].tobytes()
    # The runs of length >= 3 did change, so the test above is not vacuous.
    assert not np.array_equal(smoothed[[0, 1, 2]], points[[0, 1, 2]])


def test_smoothing_never_blends_neighbouring_runs():
    # Two files back to back, each holding still: smoothing across them would pull the edges.
    rows = [("a.mp4", i, True, True) for i in range(8)] + [("b.mp4", i, True, True) for i in range(8)]
    runs = _runs(rows, max_gap=1)
    points = np.zeros((16, 478, 3), dtype=np.float32)
    points[8:] = 100.0
    smoothed = smooth_landmarks(points, runs, window=7, order=2)
    np.testing.assert_allclose(smoothed[:8], 0.0, atol=1e-4)
    np.testing.assert_allclose(smoothed[8:], 100.0, atol=1e-4)


def _trajectory(frames: int) -> np.ndarray:
    """A smooth head movement: every point drifts and sways, [frames, 478, 3] px."""
    rng = np.random.default_rng(1)
    base = rng.uniform(100, 400, size=(1, 478, 3))
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    return base + np.concatenate([2.0 * t, 30 * np.sin(t / 15), 0.5 * t], axis=-1)


def test_noise_is_removed_and_the_motion_kept():
    clean = _trajectory(90)
    noisy = (clean + np.random.default_rng(2).normal(0, 1.5, clean.shape)).astype(np.float32)
    runs = [np.arange(90)]
    smoothed = smooth_landmarks(noisy, runs, window=7, order=2)
    before, after = jitter(noisy, runs), jitter(smoothed, runs)
    assert after < 0.3 * before, (before, after)
    error_before = np.abs(noisy - clean).mean()
    error_after = np.abs(smoothed - clean).mean()
    assert error_after < 0.75 * error_before, (error_before, error_after)


def test_polynomial_trajectory_is_preserved():
    t = np.arange(20, dtype=np.float64)[:, None, None]
    quadratic = np.broadcast_to(50 + 3 * t + 0.2 * t**2, (20, 478, 3)).astype(np.float32)
    smoothed = smooth_landmarks(quadratic, [np.arange(20)], window=7, order=2)
    np.testing.assert_allclose(smoothed, quadratic, rtol=0, atol=1e-3)


def test_short_runs_use_a_smaller_window_or_are_left_alone():
    assert window_for_run(30, 7, 2) == 7
    assert window_for_run(6, 7, 2) == 5
    assert window_for_run(5, 7, 2) == 5
    assert window_for_run(3, 7, 2) == 3
    assert window_for_run(2, 7, 2) is None
    assert window_for_run(4, 7, 3) is None  # window 3 would not exceed order 3

    rng = np.random.default_rng(3)
    points = rng.normal(200, 5, size=(8, 478, 3)).astype(np.float32)
    short, tiny = np.arange(0, 6), np.arange(6, 8)
    smoothed = smooth_landmarks(points, [short, tiny], window=7, order=1)
    expected_short = savgol_filter(points[short].astype(np.float64), 5, 1, axis=0).astype(np.float32)
    np.testing.assert_array_equal(smoothed[short], expected_short)
    assert smoothed[tiny].tobytes() == points[tiny].tobytes()


@pytest.mark.parametrize("window, order", [(6, 2), (3, 3), (1, 2), (7, -1)])
def test_bad_window_is_rejected(window, order):
    with pytest.raises(ValueError, match="Savitzky-Golay"):
        smooth_landmarks(np.zeros((10, 478, 3), np.float32), [np.arange(10)], window=window, order=order)


def test_jitter_is_the_mean_acceleration():
    points = np.zeros((5, 478, 3), dtype=np.float32)
    points[2, :, 0] = 1.0  # second differences along x: 1, -2, 1
    points[:, :, 2] = np.arange(5)[:, None] ** 2  # z accelerates but is not counted
    assert jitter(points, [np.arange(5)]) == pytest.approx(4 / 3)
    linear = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], (5, 478, 3))
    assert jitter(linear, [np.arange(5)]) == 0.0
    assert np.isnan(jitter(points, [np.arange(2), np.arange(2, 4)]))
