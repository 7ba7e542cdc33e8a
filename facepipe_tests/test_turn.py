"""Synthetic head turns (facepipe.models.turn) on a real aligned face, read back by FaceMesh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facepipe.align import five_points, hull_mask
from facepipe.evaluate import crop_landmarks, head_pose
from facepipe.faces import resize_crops
from facepipe.models import turn
from facepipe.models.augment import AugmentConfig, augment_batch, faces_to_tensors, turned_faces
from facepipe_tests.test_models import hopper_aligned

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STILL = dict(rotation_deg=0, scale=0, shift=0, perspective=0, elastic_strength=0, brightness=0, contrast=0, channel_gain=0)


def hopper_with_mesh(size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    crops, masks, _ = hopper_aligned()
    images, mask_tensor = faces_to_tensors(resize_crops(crops, size), resize_crops(masks, size))
    points = turn.crops_mesh(crops, size)
    assert np.isfinite(points).all(), "FaceMesh found no face in a Grace Hopper crop"
    return images, mask_tensor, points


def turned(images: torch.Tensor, masks: torch.Tensor, points: np.ndarray, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    return turned_faces(images, masks, np.stack([turn.turn_grid(p, np.radians(degrees), images.shape[-1]) for p in points]))


def as_crops(images: torch.Tensor) -> np.ndarray:
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def test_no_turn_reads_the_crop_where_it_is():
    _, _, points = hopper_with_mesh(96)
    grid = turn.turn_grid(points[0], 0.0, 96)
    spaced = np.linspace(-1, 1, turn.GRID_CELLS)
    straight = np.stack(np.meshgrid(spaced, spaced), axis=-1)
    assert np.abs(grid - straight).max() * 48 < 0.1  # under a tenth of a pixel at 96 px
    np.testing.assert_allclose(turn.turned_points(points[0], 0.0), points[0][:, :2], atol=1e-6)


def test_a_turned_face_reads_as_turned_either_way_and_stays_aligned():
    size = 192
    images, masks, points = hopper_with_mesh(size)
    yaw, nose_x = {}, {}
    for degrees in (-12.0, 0.0, 12.0):
        faces, _ = turned(images, masks, points, degrees) if degrees else (images, masks)
        landmarks, found = crop_landmarks(as_crops(faces))
        assert found.all(), f"FaceMesh lost the face turned by {degrees} deg"
        yaw[degrees] = head_pose(landmarks, size)[:, 0]
        nose_x[degrees] = landmarks[:, 1, 0]
        # Aligned again as a real turned face would be: its five points stay near the template's.
        drift = np.linalg.norm(np.stack([five_points(face) for face in landmarks]) -
                               np.stack([five_points(face) for face in points]), axis=2)
        assert drift.mean() < 0.03 * size, f"turned by {degrees} deg, the five points moved {drift.mean():.1f} px"
    # Each way by well over the instrument's noise (1-3 deg), in opposite directions, face by face.
    assert (yaw[12.0] - yaw[0.0] > 8).all() and (yaw[-12.0] - yaw[0.0] < -8).all(), yaw
    assert np.sign(nose_x[12.0] - nose_x[0.0]).tolist() != np.sign(nose_x[-12.0] - nose_x[0.0]).tolist()


def test_the_mask_turns_with_the_face():
    images, masks, points = hopper_with_mesh(96)

    def overlap(mask_tensor: torch.Tensor, landmarks: np.ndarray) -> float:
        """Mean IoU of masks [N, 1, S, S] with the hulls of FaceMesh's landmarks read off the faces."""
        ious = []
        for got, marks in zip(mask_tensor[:, 0].numpy() > 0.5, landmarks):
            expected = hull_mask(marks, 96) > 0
            ious.append((got & expected).sum() / (got | expected).sum())
        return float(np.mean(ious))

    for degrees in (-15.0, 15.0):
        faces, face_masks = turned(images, masks, points, degrees)
        landmarks, found = crop_landmarks(as_crops(faces))
        assert found.all()
        # The turned mask covers the turned face (as the stored masks cover theirs: 0.91 on these
        # crops), clearly better than the unturned mask does (0.80).
        assert overlap(face_masks, landmarks) > 0.84
        assert overlap(face_masks, landmarks) > overlap(masks, landmarks) + 0.04


def test_the_turn_table_gives_the_solved_turn_between_its_angles():
    _, _, points = hopper_with_mesh(96)
    table = turn.turn_table(points, 15.0, 96)
    assert table.shape == (len(points), 7, turn.GRID_CELLS, turn.GRID_CELLS, 2)
    for degrees in (-15.0, -11.3, -5.0, 0.7, 8.0, 14.2):
        angles = np.full(len(points), np.radians(degrees))
        solved = np.stack([turn.turn_grid(p, angles[0], 96) for p in points])
        error = np.abs(turn.interpolated_grids(table, angles, 15.0) - solved) * 48  # px at 96 px (grid units: 48 px)
        if degrees in (-15.0, -5.0):
            assert error.max() < 1e-4  # the table's own angles
        # Between them the grids are smooth nearly everywhere; a few points along the far cheek's
        # outline, where the spline folds, move by up to a few pixels from one solve to the next.
        assert np.median(error) < 0.01 and np.percentile(error, 99) < 0.6, (degrees, np.percentile(error, [50, 99]))
    # Faces FaceMesh found nothing in have no turns, nor faces whose five points cannot be aligned
    # (all in one spot); the other faces of the same table keep theirs.
    assert np.isnan(turn.turn_table(np.full_like(points, np.nan), 15.0, 96)).all()
    collapsed = points.copy()
    collapsed[0] = 40.0
    with pytest.raises(ValueError, match="degenerate"):
        turn.turned_points(collapsed[0], 0.1)
    mixed = turn.turn_table(collapsed, 15.0, 96)
    assert np.isnan(mixed[0]).all() and np.array_equal(mixed[1:], table[1:])


def test_turns_go_to_a_share_of_the_faces_and_are_drawn_last():
    images, masks, points = hopper_with_mesh(64)
    config = AugmentConfig(turn=0.5)
    turns = turn.turn_table(points, config.turn_deg, 64)
    plain = augment_batch(images, masks, torch.Generator().manual_seed(0), AugmentConfig())
    # Without turn tables (or with turn 0) the batch is exactly the one before head turns existed.
    for same in (augment_batch(images, masks, torch.Generator().manual_seed(0), config),
                 augment_batch(images, masks, torch.Generator().manual_seed(0), AugmentConfig(), turns)):
        assert all(torch.equal(a, b) for a, b in zip(same, plain))
    kinds = set()
    for seed in range(4):
        with_turns = augment_batch(images, masks, torch.Generator().manual_seed(seed), config, turns)
        without = augment_batch(images, masks, torch.Generator().manual_seed(seed), AugmentConfig())
        for got, base in zip(with_turns[1], without[1]):
            kinds.add(torch.equal(got, base))
    assert kinds == {True, False}
    # Faces without points (FaceMesh found none in the crop: a turn table of NaN) are never turned.
    unseen = np.full_like(turns, np.nan)
    none_turned = augment_batch(images, masks, torch.Generator().manual_seed(1), AugmentConfig(turn=1.0), unseen)
    assert all(torch.equal(a, b) for a, b in
               zip(none_turned, augment_batch(images, masks, torch.Generator().manual_seed(1), AugmentConfig())))
