"""How much the export sharpens: the amount that brings soft faces back to their reference's detail
(the swaps to the target's faces), on real crops blurred by known amounts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_export import real_crops
from test_models import hopper_faces, warped_as_the_runtimes

from facepipe.evaluate import facefusion_sharpen, sharpness_ratio
from facepipe.faces import resize_crops
from facepipe.sharpening import MAX_AMOUNT, export_sharpening, facefusion_fed, matching_amount, runtime_cut, sharpened

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blurred(crops: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(crop, (0, 0), sigma) for crop in crops])


def test_faces_as_sharp_as_themselves_need_no_sharpening():
    faces = real_crops()
    assert matching_amount(faces, faces) == 0.0


def test_slightly_soft_faces_get_the_smallest_amount_that_restores_their_detail():
    faces = real_crops()
    soft = blurred(faces, 0.5)
    assert sharpness_ratio(soft, faces) < 0.9
    amount = matching_amount(soft, faces, cap=2.0)
    assert 0 < amount < 2.0
    assert sharpness_ratio(sharpened(soft, amount), faces) >= 1.0
    assert sharpness_ratio(sharpened(soft, amount - 2.0 / 2**11), faces) < 1.0  # a step less falls short
    assert matching_amount(blurred(faces, 0.7), faces, cap=2.0) > amount  # softer faces need more


def test_very_soft_faces_get_the_cap():
    faces = real_crops()
    very_soft = blurred(faces, 1.5)
    assert sharpness_ratio(sharpened(very_soft, MAX_AMOUNT), faces) < 1.0
    assert matching_amount(very_soft, faces) == MAX_AMOUNT


def test_the_runtimes_cut_is_bilinear_and_sharper_than_the_shrink():
    """What FaceFusion and DeepFaceLive feed and paste: the face warped straight to the model's size
    with cv2.warpAffine's linear filter (here from the stored crop, at the same pixel centres), not
    the anti-aliased shrink the training crops come from, and so the sharper of the two."""
    crops, _ = hopper_faces()
    cut = runtime_cut(crops, 96)
    warped = warped_as_the_runtimes(crops, 96)
    assert cut.shape == (len(crops), 96, 96, 3) and cut.dtype == np.uint8
    assert np.abs(cut - warped).mean() < 0.5 and np.abs(cut - warped).max() <= 4  # their fixed-point weights differ
    assert sharpness_ratio(cut, resize_crops(crops, 96)) > 1.5


def test_the_export_sharpens_the_swaps_to_the_targets_faces_as_the_runtimes_cut_them():
    crops, _ = hopper_faces()
    cut, shrunk = runtime_cut(crops, 96), resize_crops(crops, 96)
    # swaps as sharp as the anti-aliased shrink: just enough to reach the runtime's cut
    amount = export_sharpening(shrunk, crops)
    assert 0 < amount < MAX_AMOUNT and sharpness_ratio(sharpened(shrunk, amount), cut) >= 1.0
    # swaps far softer: the cap; swaps as sharp as the runtime's cut: none
    assert export_sharpening(blurred(shrunk, 1.5), crops) == MAX_AMOUNT == 2.0
    assert export_sharpening(cut, crops) == 0.0


def test_the_swaps_are_fed_as_facefusion_feeds_them():
    faces = real_crops()
    fed = facefusion_fed(faces, 96)
    assert fed.shape == (len(faces), 96, 96, 3) and fed.dtype == np.uint8
    small = resize_crops(faces, 96)
    assert np.array_equal(fed[0], facefusion_sharpen(small[0]))
    assert sharpness_ratio(fed, small) > 1.2  # its 1.75 crop - 0.75 blur sharpens what the model reads
