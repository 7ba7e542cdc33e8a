"""How much the export sharpens: the amount that brings soft faces back to their reference's detail
(the swaps to the target's faces), on real crops blurred by known amounts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_export import real_crops

from facepipe.evaluate import facefusion_sharpen, sharpness_ratio
from facepipe.faces import resize_crops
from facepipe.sharpening import MAX_AMOUNT, export_sharpening, facefusion_fed, matching_amount, sharpened

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


def test_the_export_sharpens_the_swaps_to_the_targets_own_faces_and_no_further():
    faces = real_crops()
    # swaps far softer than the target's faces: the cap
    assert export_sharpening(blurred(faces, 1.5), faces) == MAX_AMOUNT == 1.0
    # swaps a little softer: just enough to reach the targets' sharpness
    slightly_soft = blurred(faces, 0.4)
    amount = export_sharpening(slightly_soft, faces)
    assert 0 < amount < MAX_AMOUNT and sharpness_ratio(sharpened(slightly_soft, amount), faces) >= 1.0
    # swaps already as sharp as the targets (or of another size, compared at the swaps'): none
    assert export_sharpening(faces, faces) == 0.0
    assert export_sharpening(faces[:, ::2, ::2].copy(), np.stack([cv2.pyrUp(f) for f in faces])) == 0.0


def test_the_swaps_are_fed_as_facefusion_feeds_them():
    faces = real_crops()
    fed = facefusion_fed(faces, 96)
    assert fed.shape == (len(faces), 96, 96, 3) and fed.dtype == np.uint8
    small = resize_crops(faces, 96)
    assert np.array_equal(fed[0], facefusion_sharpen(small[0]))
    assert sharpness_ratio(fed, small) > 1.2  # its 1.75 crop - 0.75 blur sharpens what the model reads
