"""Swap-quality metrics (facepipe.evaluate) on constructed inputs whose answer is known.

No dev media, no training: synthetic images and landmarks, plus one photo shipped inside
matplotlib for the few checks that need a real face.
"""

import dataclasses
import json
import os

import cv2
import matplotlib
import numpy as np
import pytest

from facepipe.align import align_face, five_points, template_points
from facepipe.evaluate import (
    EYE_CORNERS,
    EYE_LIDS,
    POSE_LANDMARKS,
    POSE_MODEL_POINTS,
    FaceMeasures,
    SwapEvaluation,
    attribute_following,
    checkerboard,
    correlation,
    correlation_interval,
    evaluate_swaps,
    eye_opening,
    face_alone,
    facefusion_box_mask,
    facefusion_crop,
    facefusion_input,
    facefusion_match_colour,
    facefusion_output,
    facefusion_paste_back,
    facefusion_paste_mask,
    facefusion_sharpen,
    face_colour,
    following_intervals,
    span_ratio,
    head_pose,
    image_quality,
    mean_identity_face,
    sharpness,
    sharpness_ratio,
    temporal_change,
    temporal_ratio,
    tone_gap,
)
from facepipe.faces import resize_crops
from facepipe.landmarks import detect_static

SIZE = 128


def textured_crops(count: int = 4, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Crops with detail at every scale (smoothed noise of several cell sizes + edges)."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        image = np.zeros((size, size), np.float64)
        for cell in (2, 4, 8, 16):
            image += cv2.resize(rng.normal(0, 30, (size // cell, size // cell)), (size, size), interpolation=cv2.INTER_LINEAR)
        image[:, size // 2:] += 40  # an edge through the middle
        crops.append(cv2.cvtColor(np.clip(image + 110, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR))
    return np.stack(crops)


def smooth_crops(count: int = 3, size: int = SIZE) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] / size
    crops = []
    for k in range(count):
        grey = 120 + 60 * np.sin(2 * np.pi * (xs + 0.3 * k)) * np.cos(2 * np.pi * ys) + 20 * ys
        crops.append(cv2.cvtColor(np.clip(grey, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR))
    return np.stack(crops)


def with_checker(crops: np.ndarray, amplitude: float = 12.0) -> np.ndarray:
    """A 2-px checker (what a x2 pixel shuffle with unequal sub-pixel kernels leaves)."""
    size = crops.shape[1]
    ys, xs = np.mgrid[0:size, 0:size]
    checker = amplitude * np.where((ys + xs) % 2 == 0, 1.0, -1.0)
    return np.clip(crops.astype(np.float64) + checker[None, :, :, None], 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Sharpness


def test_a_blurred_face_is_less_sharp_and_an_identical_one_equally_sharp():
    crops = textured_crops()
    blurred = np.stack([cv2.GaussianBlur(c, (0, 0), 2.0) for c in crops])
    assert sharpness_ratio(crops, crops) == pytest.approx(1.0)
    ratio = sharpness_ratio(blurred, crops)
    assert ratio < 0.3, ratio
    assert sharpness_ratio(crops, blurred) > 3.0
    assert (sharpness(blurred) < sharpness(crops)).all()


def test_sharpness_ratio_compares_at_the_candidates_size():
    crops = textured_crops()
    small = np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in crops])
    # the reference is resized to the candidate's size first: the same content reads ~1
    assert sharpness_ratio(small, crops) == pytest.approx(1.0, abs=0.02)


def test_sharpness_reads_the_central_face_only():
    crops = textured_crops(1)
    flat_border = crops.copy()
    flat_border[:, :20] = 128  # the top rows lie outside the central face
    assert sharpness(flat_border)[0] == pytest.approx(sharpness(crops)[0])


# ---------------------------------------------------------------------------------------------
# Checkerboard


def test_a_two_pixel_checker_reads_its_amplitude_and_a_smooth_face_low():
    smooth = smooth_crops()
    natural = textured_crops()
    smooth_score, natural_score = checkerboard(smooth), checkerboard(natural)
    assert (smooth_score < 0.5).all(), smooth_score
    assert (natural_score < 2.0).all(), natural_score
    # grey levels: a +-12 checker reads ~12 whatever lies under it
    assert checkerboard(with_checker(np.full((1, SIZE, SIZE, 3), 128, np.uint8)))[0] == pytest.approx(12.0, rel=0.05)
    assert np.allclose(checkerboard(with_checker(smooth)), 12.0, rtol=0.1), checkerboard(with_checker(smooth))
    assert (checkerboard(with_checker(natural, 4.0)) > natural_score + 2.0).all()


def test_checkerboard_reads_the_central_face_not_the_unpasted_background():
    smooth = smooth_crops(1)
    checkered = with_checker(smooth)
    background_only = smooth.copy()
    background_only[:, :20] = checkered[:, :20]  # the top rows lie outside the central face
    background_only[:, -20:] = checkered[:, -20:]
    assert checkerboard(background_only)[0] == pytest.approx(checkerboard(smooth)[0], abs=1e-9)
    assert checkerboard(checkered)[0] > 10


def test_checkerboard_sees_two_pixel_stripes_and_not_coarser_ones():
    smooth = smooth_crops(1)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    fine = np.clip(smooth.astype(float) + np.where(xs % 2 == 0, 10.0, -10.0)[None, :, :, None], 0, 255).astype(np.uint8)
    coarse = np.clip(smooth.astype(float) + np.where(xs % 8 < 4, 10.0, -10.0)[None, :, :, None], 0, 255).astype(np.uint8)
    assert checkerboard(fine)[0] == pytest.approx(10.0, rel=0.1)
    assert checkerboard(coarse)[0] < 1.0  # period 8 px: not the pixel-shuffle period
    noise = np.random.default_rng(1).normal(128, 20, (4, SIZE, SIZE, 1)).clip(0, 255).astype(np.uint8).repeat(3, axis=3)
    band_share = 3 * np.pi / 16**2  # three discs of radius 1/16 cycles/px: white noise's share
    assert np.median(checkerboard(noise)) == pytest.approx(20 * np.sqrt(band_share), rel=0.2)


# ---------------------------------------------------------------------------------------------
# Temporal stability


def test_identical_sequences_have_temporal_ratio_one_a_frozen_one_zero_flicker_more():
    frames = textured_crops(6)
    assert temporal_ratio(frames, frames) == pytest.approx(1.0)
    assert temporal_ratio(np.repeat(frames[:1], 6, axis=0), frames) == 0.0
    assert temporal_change(frames).shape == (5,)
    # a slowly drifting target; a candidate that flickers between two states
    drifting = np.stack([np.roll(frames[0], k, axis=1) for k in range(6)])
    flicker = np.stack([frames[0] if k % 2 == 0 else frames[1] for k in range(6)])
    assert temporal_ratio(flicker, drifting) > 1.5
    assert np.isnan(temporal_ratio(frames[:1], frames[:1]))
    assert np.isnan(temporal_ratio(frames, np.repeat(frames[:1], 6, axis=0)))  # the reference never changes


# ---------------------------------------------------------------------------------------------
# Attributes from landmarks: pose and eyes


def projected_landmarks(yaw_deg: np.ndarray, pitch_deg: float = 0.0, size: int = 256) -> np.ndarray:
    """[N, 478, 2] landmarks whose six pose points are the generic 3D face rotated by the given
    yaw (the other points are finite filler): the head_pose convention, yaw > 0 nose right."""
    camera = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], dtype=np.float64)
    faces = []
    for yaw in np.radians(yaw_deg):
        pitch = np.radians(pitch_deg)
        # rotate the face about the vertical axis (yaw) then the horizontal one (pitch)
        rot_y = np.array([[np.cos(yaw), 0, -np.sin(yaw)], [0, 1, 0], [np.sin(yaw), 0, np.cos(yaw)]])
        rot_x = np.array([[1, 0, 0], [0, np.cos(pitch), np.sin(pitch)], [0, -np.sin(pitch), np.cos(pitch)]])
        rotation = rot_x @ rot_y
        rvec, _ = cv2.Rodrigues(rotation)
        image_points, _ = cv2.projectPoints(POSE_MODEL_POINTS, rvec, np.array([0.0, 0.0, 2500.0]), camera, None)
        points = np.full((478, 2), size / 2, dtype=np.float64)
        points[POSE_LANDMARKS] = image_points[:, 0]
        faces.append(points)
    return np.stack(faces)


def measures(pose: np.ndarray, mouth=None, eyes=None, distances=None) -> FaceMeasures:
    count = len(pose)
    return FaceMeasures(
        detected=np.ones(count, bool), pose=pose,
        mouth=np.zeros(count) if mouth is None else np.asarray(mouth, float),
        embeddings=np.zeros((count, 4)),
        distance_to_profile=np.zeros(count) if distances is None else np.asarray(distances, float),
        eyes=np.zeros(count) if eyes is None else np.asarray(eyes, float))


def test_a_known_rotation_gives_the_known_yaw_and_its_correlation():
    true_yaw = np.array([-30.0, -15.0, 0.0, 10.0, 25.0])
    poses = head_pose(projected_landmarks(true_yaw), 256)
    assert np.allclose(poses[:, 0], true_yaw, atol=1.0), poses[:, 0]
    target = measures(poses)
    following = attribute_following(measures(poses), target)
    assert following["yaw_corr"] == pytest.approx(1.0) and following["yaw_mae_deg"] == pytest.approx(0.0)
    mirrored = attribute_following(measures(head_pose(projected_landmarks(-true_yaw), 256)), target)
    assert mirrored["yaw_corr"] == pytest.approx(-1.0, abs=1e-3)
    halved = attribute_following(measures(head_pose(projected_landmarks(true_yaw / 2), 256)), target)
    assert halved["yaw_corr"] == pytest.approx(1.0, abs=1e-3) and halved["yaw_mae_deg"] > 5  # follows, under-turns
    assert halved["yaw_span"] == pytest.approx(0.5, abs=0.05) and following["yaw_span"] == pytest.approx(1.0)


def test_a_mouth_in_step_but_a_fifth_as_wide_correlates_fully_and_spans_a_fifth():
    opening = np.linspace(0.0, 0.12, 20)  # a target talking
    zero_pose = np.zeros((len(opening), 3))
    small = attribute_following(measures(zero_pose, mouth=0.001 + opening / 5), measures(zero_pose, mouth=opening))
    assert small["mouth_corr"] == pytest.approx(1.0) and small["mouth_span"] == pytest.approx(0.2)
    wider = attribute_following(measures(zero_pose, mouth=opening * 1.5), measures(zero_pose, mouth=opening))
    assert wider["mouth_span"] == pytest.approx(1.5)
    # a frozen face spans nothing; a target that does not vary gives no ratio
    assert span_ratio(np.full(20, 0.05), opening) == 0.0 and np.isnan(span_ratio(opening, np.zeros(20)))
    assert np.isnan(span_ratio(opening[:2], opening[:2]))


def test_eye_opening_is_lid_gap_over_eye_width_and_is_followed():
    gaps = np.array([2.0, 6.0, 10.0, 4.0])
    landmarks = np.full((len(gaps), 478, 2), 100.0)
    for (outer, inner), (upper, lower), x0 in zip(EYE_CORNERS, EYE_LIDS, (60.0, 140.0)):
        landmarks[:, outer] = (x0, 100.0)
        landmarks[:, inner] = (x0 + 40.0, 100.0)
        landmarks[:, upper, 1] = 100.0 - gaps / 2
        landmarks[:, lower, 1] = 100.0 + gaps / 2
    opening = eye_opening(landmarks)
    assert np.allclose(opening, gaps / 40.0)
    zero_pose = np.zeros((len(gaps), 3))
    following = attribute_following(measures(zero_pose, eyes=opening), measures(zero_pose, eyes=opening))
    assert following["eye_corr"] == pytest.approx(1.0) and following["eye_mae"] == 0.0
    frozen = attribute_following(measures(zero_pose, eyes=np.full(len(gaps), 0.1)), measures(zero_pose, eyes=opening))
    assert frozen["eye_corr"] == 0.0


def test_a_correlations_interval_holds_it_narrows_with_more_faces_and_is_exact_for_a_perfect_line():
    rng = np.random.default_rng(3)
    def noisy_pair(count):  # a series and one that follows it with r ~ 0.6
        a = rng.normal(size=count)
        return a, 0.6 * a + 0.8 * rng.normal(size=count)
    few, many = noisy_pair(60), noisy_pair(2000)
    low, high = correlation_interval(*few)
    assert low < correlation(*few) < high
    assert low < 0.6 < high
    wide, narrow = high - low, np.subtract(*correlation_interval(*many)[::-1])
    assert narrow < wide / 3  # ~sqrt(60 / 2000) of it
    assert correlation_interval(*few) == (low, high)  # seeded: a report reads the same twice
    line = np.arange(10.0)
    assert correlation_interval(line, 2 * line + 1) == pytest.approx((1.0, 1.0))
    assert correlation_interval(line, np.full(10, 0.3)) == (0.0, 0.0)  # cannot follow, as correlation says
    assert all(np.isnan(correlation_interval(line[:2], line[:2])))


def test_following_intervals_cover_the_faces_detected_in_both():
    yaw = np.linspace(-20, 20, 12)
    target = measures(np.stack([yaw, yaw / 2, 0 * yaw], axis=1), mouth=np.linspace(0, 0.1, 12), eyes=np.linspace(0.1, 0.3, 12))
    swap = measures(np.stack([yaw, -yaw, 0 * yaw], axis=1), mouth=np.full(12, 0.05), eyes=np.linspace(0.1, 0.3, 12))
    swap = dataclasses.replace(swap, detected=np.arange(12) != 4)
    swap.pose[4] = (90.0, 90.0, 0.0)  # not detected: must not count
    intervals = following_intervals(swap, target)
    assert intervals["yaw"] == pytest.approx([1.0, 1.0]) and intervals["eyes"] == pytest.approx([1.0, 1.0])
    assert intervals["pitch"] == pytest.approx([-1.0, -1.0]) and intervals["mouth"] == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# Identity shares and the summary


def test_identity_shares_and_the_summary_keep_the_keys_the_pair_asset_reads():
    count = 4
    pose = np.zeros((count, 3))
    target = measures(pose, distances=[0.8, 0.8, 0.8, 0.8])
    swap = measures(pose, distances=[0.3, 0.5, 0.7, 0.9])  # two within 0.6
    baseline = measures(pose, distances=[0.2] * count)
    swap_to_target = np.array([0.6, 0.4, 0.8, 0.95])  # closer to the identity: rows 0, 2, 3
    evaluation = SwapEvaluation(target, swap, baseline, swap_to_target, 0.6,
                                baseline_to_target_distance=np.full(count, 0.7))
    summary = evaluation.summary()
    json.dumps(summary, allow_nan=False)
    identity = summary["identity"]
    assert identity["swap_within_threshold"] == 0.5
    assert identity["swap_closer_to_identity_than_target"] == 0.75
    assert identity["baseline_within_threshold"] == 1.0 and identity["baseline_closer_to_identity_than_target"] == 1.0
    assert identity["target_within_threshold"] == 0.0
    assert identity["identity_transfer_gain"] == pytest.approx(0.2)
    for key in ("swap_following", "baseline_following", "pose_following_margin_deg", "mouth_following_margin",
                "eye_following_margin"):
        assert key in summary
    assert "image" not in summary  # only when pixels were measured


def test_image_quality_of_a_blurred_checkered_swap_beside_the_pasted_face():
    targets = textured_crops(5)
    swaps = with_checker(np.stack([cv2.GaussianBlur(c, (0, 0), 2.0) for c in targets]))
    quality = image_quality(targets, swaps, targets[0]).summary()
    assert quality["measured_at_px"] == SIZE
    assert quality["sharpness_ratio"]["baseline"] == pytest.approx(sharpness_ratio(targets[:1], targets), rel=1e-6)
    assert quality["checkerboard"]["swap"] > 5 * quality["checkerboard"]["target"]
    assert quality["temporal_ratio"]["baseline"] == 0.0
    assert quality["tone_gap"]["swap"] < 1.0  # blurred and checkered, but in the targets' colours


def test_tone_gap_is_the_distance_of_the_central_faces_mean_colours():
    crops = textured_crops(4)
    assert tone_gap(crops, crops) == 0.0
    # only the central face counts: hair, background and mask edge repainted leave it at 0
    repainted = crops.copy()
    repainted[:, :20] = (0, 0, 255)
    repainted[:, :, :20] = (255, 0, 0)
    assert tone_gap(repainted, crops) == 0.0
    # neutral white against black: L* 100 against 0
    assert tone_gap(np.full_like(crops, 255), np.zeros_like(crops)) == pytest.approx(100.0, abs=0.01)
    # the same faces warmer and darker: apart by how far their mean colour moved, measured at the
    # candidate's size (the reference is resized to it)
    warm = np.clip(crops.astype(np.int16) + np.array([-40, -20, 10]), 0, 255).astype(np.uint8)
    moved = np.linalg.norm(face_colour(warm) - face_colour(crops), axis=1)
    assert tone_gap(warm, crops) == pytest.approx(float(np.median(moved)))
    assert tone_gap(warm, crops) > 10
    small = resize_crops(warm, SIZE // 2)
    assert tone_gap(small, crops) == pytest.approx(tone_gap(warm, crops), abs=1.0)


# ---------------------------------------------------------------------------------------------
# FaceFusion's way of feeding a DFM model


def test_sharpening_is_facefusions_unsharp_mask_saturated_to_uint8():
    flat = np.full((32, 32, 3), 77, np.uint8)
    assert np.array_equal(facefusion_sharpen(flat), flat)
    edge = np.zeros((32, 32, 3), np.uint8)
    edge[:, 16:] = 200
    sharp = facefusion_sharpen(edge)
    assert sharp.dtype == np.uint8 and sharp[:, 17].mean() > 200 and sharp[:, 14].min() == 0  # overshoot, clipped
    expected = np.clip(1.75 * edge - 0.75 * cv2.GaussianBlur(edge, (0, 0), 2).astype(float), 0, 255)
    assert np.abs(sharp.astype(float) - expected).max() <= 1.0
    batch = facefusion_input(np.stack([edge, flat]))
    assert batch.dtype == np.float32 and batch.shape == (2, 32, 32, 3) and 0 <= batch.min() and batch.max() <= 1
    assert np.array_equal(facefusion_output(batch[1]), flat)


def test_facefusion_crop_maps_the_five_points_onto_the_template():
    size = 96
    template = template_points(size)
    # a face twice the crop's scale, shifted: the fit undoes it exactly
    points5 = template * 2.0 + np.array([40.0, 25.0])
    frame = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    crop, matrix = facefusion_crop(frame, points5, size)
    assert crop.shape == (size, size, 3)
    mapped = points5 @ matrix[:, :2].T + matrix[:, 2]
    assert np.allclose(mapped, template, atol=1e-6)
    # the five points from FaceMesh landmarks: eye-contour means, nose tip, mouth corners
    landmarks = np.random.default_rng(1).uniform(0, 100, (478, 3))
    five = five_points(landmarks)
    assert five.shape == (5, 2)
    assert np.allclose(five[0], landmarks[[33, 160, 158, 133, 153, 144], :2].mean(axis=0))
    assert np.allclose(five[3], landmarks[61, :2]) and np.allclose(five[4], landmarks[291, :2])


def test_facefusion_colour_matching_takes_the_replaced_crops_colours_as_far_as_they_are_alike():
    rng = np.random.default_rng(3)
    swap = rng.integers(60, 190, (96, 96, 3), dtype=np.uint8)
    assert np.array_equal(facefusion_match_colour(swap, swap), swap)  # nothing to match
    # The crop is the swap in another light (+30 blue, -20 red): the difference is uniform, so every
    # low-pass keeps it and the matched swap is the crop itself; it is blended in by how alike the
    # two hue-saturation histograms are, which lies strictly between "unrelated" and "the same".
    crop = (swap.astype(int) + [30, 0, -20]).clip(0, 255).astype(np.uint8)
    matched = facefusion_match_colour(crop, swap).astype(float)
    share = (matched - swap).mean() / (crop.astype(float) - swap).mean()
    assert 0.05 < share < 0.95
    expected = swap * (1 - share) + crop * share
    assert np.abs(matched - expected).max() <= 1.5
    # Fine detail stays the swap's: a checkerboard in the crop does not come through (16 px is the
    # coarsest step), only its mean.
    checker = np.indices((96, 96)).sum(axis=0) % 2 * 100 + 80
    busy = np.repeat(checker[..., None], 3, axis=2).astype(np.uint8)
    flat = np.full((96, 96, 3), 130, np.uint8)
    result = facefusion_match_colour(busy, flat)
    assert result.std() < 3 and abs(float(result.mean()) - 130) < 3


def test_paste_mask_and_paste_back():
    size = 64
    box = facefusion_box_mask(size)
    assert box[0, 0] < 0.05 and box[0].max() < 0.2 and box[size // 2, size // 2] == pytest.approx(1.0)
    inner = np.zeros((size, size, 1), np.float32)
    inner[16:48, 16:48] = 1.0
    mask = facefusion_paste_mask(inner, np.ones((size, size), np.float32))
    assert mask.shape == (size, size) and mask[32, 32] > 0.9 and mask[2, 2] < 0.01
    frame = np.full((100, 100, 3), 10, np.uint8)
    matrix = np.array([[1.0, 0.0, -18.0], [0.0, 1.0, -18.0]])  # the crop is frame[18:82, 18:82]
    pasted = facefusion_paste_back(frame, np.full((size, size, 3), 250, np.uint8), mask, matrix)
    assert pasted[50, 50].min() > 230 and pasted[0, 0].max() == 10


# ---------------------------------------------------------------------------------------------
# Through evaluate_swaps, with a real face and a stand-in embedder


class PixelEmbedder:
    """A stand-in embedder: the crop's central face, small and grey, as the embedding."""

    name = "pixels"
    metric = "euclidean"

    def embed(self, crops, points5):
        return np.stack([cv2.resize(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY)[40:90, 40:90], (8, 8)).ravel() / 255.0
                         for c in crops])

    def distance(self, a, b):
        return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def test_evaluate_swaps_reports_eyes_shares_and_image_quality():
    photo = cv2.imread(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"))
    crop = align_face(photo, detect_static(photo), SIZE)[0]
    targets = np.stack([np.roll(crop, shift, axis=1) for shift in (0, 2, 4, 6)])
    swaps = np.stack([cv2.GaussianBlur(c, (0, 0), 1.5) for c in targets])
    embedder = PixelEmbedder()
    profile = {"embedder": "pixels", "embedding_mean": embedder.embed(targets[:1], None)[0].tolist(),
               "embedding_metric": "euclidean", "distance_threshold": 0.5}
    summary = evaluate_swaps(targets, swaps, profile, embedder, mean_identity_face(targets)).summary()
    json.dumps(summary, allow_nan=False)
    assert summary["swap_following"]["faces_compared"] == 4 and "eye_corr" in summary["swap_following"]
    assert summary["image"]["sharpness_ratio"]["swap"] < 1.0
    assert summary["image"]["temporal_ratio"]["baseline"] == 0.0
    assert 0.0 <= summary["identity"]["swap_closer_to_identity_than_target"] <= 1.0
    assert "baseline_closer_to_identity_than_target" in summary["identity"]


def test_a_face_alone_keeps_its_mask_and_greys_the_rest():
    crops = np.full((2, 8, 8, 3), 200, np.uint8)
    crops[1] = 30
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[:, 2:6, 2:6] = 255
    alone = face_alone(crops, masks)
    assert (alone[:, 2:6, 2:6] == crops[:, 2:6, 2:6]).all()
    assert (alone[:, :2] == 128).all() and (alone[:, 6:] == 128).all()
    # float masks are cut at half, one crop works alike, and a mask of the wrong size is refused
    soft = masks.astype(np.float32) / 255 * 0.6
    assert (face_alone(crops[0], soft[0]) == alone[0]).all()
    assert (face_alone(crops[0], soft[0] * 0.8)[2:6, 2:6] == 128).all()
    with pytest.raises(ValueError, match="one mask per crop"):
        face_alone(crops, masks[:, :4])


def test_the_mean_of_masks_is_a_mask():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0] = 255
    assert (mean_identity_face(masks) == 128).all()
