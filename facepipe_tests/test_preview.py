"""Preview compositing: colour transfer and the side-by-side video frame."""

import cv2
import numpy as np

from facepipe.preview import colour_transfer, side_by_side


def lab_stats(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64)[mask.ravel() > 0]
    return lab.mean(axis=0), lab.std(axis=0)


def test_colour_transfer_takes_the_reference_light_inside_the_mask():
    rng = np.random.default_rng(0)
    texture = rng.normal(0, 12, (64, 64, 1))
    reference = np.clip(np.array([90, 120, 170]) + texture, 0, 255).astype(np.uint8)  # warm, contrasty
    face = np.clip(np.array([160, 150, 140]) + 0.4 * texture, 0, 255).astype(np.uint8)  # bluish, flat
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    # the reference's light outside the mask must not count
    reference[mask == 0] = (255, 0, 255)
    moved = colour_transfer(face, reference, mask)
    mean, std = lab_stats(moved, mask)
    reference_mean, reference_std = lab_stats(reference, mask)
    before_mean, _ = lab_stats(face, mask)
    assert np.abs(mean - reference_mean).max() < 2.0 < np.abs(before_mean - reference_mean).max()
    assert abs(std[0] - reference_std[0]) < 1.5  # the lightness contrast follows too
    # the structure is kept: the transferred face still correlates with the texture
    assert np.corrcoef(moved[..., 1][mask > 0].astype(float), texture[..., 0][mask > 0])[0, 1] > 0.9


def test_colour_transfer_with_an_empty_mask_changes_nothing():
    face = np.full((8, 8, 3), 100, np.uint8)
    assert colour_transfer(face, np.zeros_like(face), np.zeros((8, 8), np.uint8)) is face


def test_side_by_side_keeps_both_frames_and_bounds_the_height():
    left = np.zeros((720, 1280, 3), np.uint8)
    right = np.full((720, 1280, 3), 255, np.uint8)
    both = side_by_side(left, right, max_height=360)
    assert both.shape == (360, 1280, 3)
    assert both[:, :600].max() == 0 and both[:, 680:].min() == 255
    small = side_by_side(left[:100, :100], right[:100, :100])
    assert small.shape == (100, 200, 3)
