"""The export's skin-tone gain: the per-channel factors that take the swaps' mean colour over the
central face to the target's, on real crops recoloured by known factors."""

from __future__ import annotations

import numpy as np
import pytest
from test_export import real_crops

from facepipe.faces import central_face
from facepipe.skin_tone import MAX_GAIN, face_means, tone_gain


def recoloured(crops: np.ndarray, factors) -> np.ndarray:
    return np.clip(crops.astype(np.float64) * np.asarray(factors), 0, 255).round().astype(np.uint8)


def test_the_gain_undoes_a_known_change_of_light_and_white_balance():
    swaps = real_crops()
    target = recoloured(swaps, (1.2, 0.9, 0.8))  # a bluer, darker light (BGR)
    gain = tone_gain(swaps, target, 1.0)
    np.testing.assert_allclose(gain, (1.2, 0.9, 0.8), atol=0.02)
    # the swaps multiplied by it have the target's mean colour over the central face
    np.testing.assert_allclose(face_means(recoloured(swaps, gain)), face_means(target), atol=1.0)
    # a share of the way on a log scale, and none at all at 0
    np.testing.assert_allclose(tone_gain(swaps, target, 0.5), np.sqrt(gain), atol=1e-9)
    assert tone_gain(swaps, target, 0.0) == (1.0, 1.0, 1.0)


def test_the_gain_reads_the_central_face_only_at_any_size():
    swaps = real_crops()
    target = swaps.copy()
    for crop in target:  # what lies outside the central face does not count
        outside = np.ones(crop.shape[:2], bool)
        central_face(outside)[:] = False
        crop[outside] = 0
    assert tone_gain(swaps, target, 1.0) == (1.0, 1.0, 1.0)
    # the target's faces at twice the swaps' size are brought to theirs first
    np.testing.assert_allclose(tone_gain(real_crops(48), real_crops(96), 1.0), 1.0, atol=0.02)


def test_the_gain_is_bounded_and_its_share_checked():
    swaps = real_crops()
    dark = recoloured(swaps, (0.1, 0.1, 0.1))
    assert tone_gain(swaps, dark, 1.0) == pytest.approx((1 / MAX_GAIN,) * 3)
    assert tone_gain(dark, swaps, 1.0) == pytest.approx((MAX_GAIN,) * 3)
    with pytest.raises(ValueError, match="skin_tone"):
        tone_gain(swaps, swaps, 1.5)
