"""Turning the painted swap to the target's yaw (facepipe.models.follow): the warp's fields, the
gap the readers read, the exported graph, and a fitted turn on faces whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_export import random_merged_pair, real_crops
from test_pose import rendered_crops
from test_turn import hopper_with_mesh

from facepipe.evaluate import correlation
from facepipe.export import export_dfm
from facepipe.faces import resize_crops
from facepipe.models import follow, turn
from facepipe.models.augment import _base_grid, compose_grids
from facepipe.models.pose import PoseReader, crop_poses

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_fields_leave_the_crop_at_no_angle_and_fit_the_turn_table():
    images, _, points = hopper_with_mesh(96)
    fields = follow.turn_fields(points[0], 96)
    assert fields.shape == (3, 96, 96, 2)
    # At no angle the crop is read at its own pixel centres: nothing moves (to float rounding).
    torch.testing.assert_close(follow.turned(images, fields, torch.zeros(len(images))), images, atol=1e-5, rtol=0)
    # At each of the table's angles the quadratic is the spline's warp to within a twentieth of a pixel
    # at the median point; the rest is the far cheek's outline, where the spline's solves themselves
    # jump by a few px from one angle to the next (facepipe.models.turn) and the quadratic is smoother.
    table = turn.turn_table(points[:1], follow.MAX_TURN_DEG, 96)[0]
    base = _base_grid(96, 96, torch.device("cpu")).unsqueeze(0)
    for angle, row in zip(turn.table_angles(follow.MAX_TURN_DEG), table):
        exact = compose_grids(torch.from_numpy(row)[None], base)[0]
        fitted = fields[0] + angle * fields[1] + angle ** 2 * fields[2]
        error_px = (fitted - exact).norm(dim=-1) * 48
        assert error_px.median() < 0.1 and error_px.quantile(0.99) < 2.0, (np.degrees(angle), error_px.quantile(0.99))


def fixed_reader(yaw: float, size: int) -> PoseReader:
    """A PoseReader that reads every face at ``yaw`` (its head zeroed, its centre set)."""
    reader = PoseReader(size)
    with torch.no_grad():
        reader.head.weight.zero_()
        reader.head.bias.zero_()
        reader.centre.copy_(torch.tensor([yaw, 0.0]))
    return reader.requires_grad_(False).eval()


def test_the_turn_closes_a_share_of_the_read_gap_within_its_reach_and_not_at_morph_0():
    images, masks, points = hopper_with_mesh(96)
    fields = follow.turn_fields(points[0], 96)
    swap_turn = follow.SwapTurn(fixed_reader(20.0, 96), fixed_reader(5.0, 96), fields, radians_per_degree=0.01, share=0.5)
    angles = swap_turn.angles(images, images)
    torch.testing.assert_close(angles, torch.full((len(images),), 0.5 * 0.01 * 15.0))
    far = follow.SwapTurn(fixed_reader(80.0, 96), fixed_reader(-80.0, 96), fields, radians_per_degree=0.02, share=1.0)
    torch.testing.assert_close(far.angles(images, images), torch.full((len(images),), float(np.radians(follow.MAX_TURN_DEG))))
    face, mask = swap_turn(images, images, masks, torch.ones(1))
    assert (face - images).abs().mean() > 1e-3 and (mask - masks).abs().mean() > 1e-3
    torch.testing.assert_close(swap_turn(images, images, masks, torch.zeros(1)), (images, masks), atol=1e-5, rtol=0)


def test_a_pair_export_with_the_turn_runs_as_torch_does_in_onnxruntime(tmp_path):
    merged = random_merged_pair(size=48)
    crops = real_crops(48)
    points = turn.crops_mesh(resize_crops(crops[:1], 96), 48)[0]
    swap_turn = follow.SwapTurn(fixed_reader(12.0, 48), fixed_reader(0.0, 48), follow.turn_fields(points, 48),
                                radians_per_degree=float(np.radians(1.0)), share=1.0)
    exported = export_dfm(merged.dfm_model(turn=swap_turn), 48, tmp_path / "pair.dfm", crops[:2])
    assert exported.max_abs_error < 1e-4  # checked in onnxruntime at morph 0, 0.5 and 1
    with torch.no_grad():
        inputs = torch.from_numpy(crops[2:3].astype(np.float32) / 255.0)
        unturned, turned_face = merged.dfm_model()(inputs)[1], merged.dfm_model(turn=swap_turn)(inputs)[1]
        # the painted (filled) face turned by the 12 deg the readers read apart, one degree of warp each
        expected = follow.turned(unturned.permute(0, 3, 1, 2), swap_turn.fields, torch.tensor([np.radians(12.0)]))
    torch.testing.assert_close(turned_face, expected.permute(0, 2, 3, 1), atol=1e-5, rtol=0)
    assert (unturned - turned_face).abs().max() > 1e-3


def test_a_fitted_turn_makes_a_swap_that_does_not_turn_follow_the_target():
    """Target faces turning -24..24 deg and a 'swap' that paints the same frontal face for each:
    the fitted turn reads both and turns the painted face to the target's yaw."""
    size = 96
    train_yaws, held_yaws = np.arange(-24.0, 25.0, 4.0), np.array([-18.0, -10.0, -2.0, 6.0, 14.0, 22.0])
    train, held = rendered_crops(train_yaws, np.zeros_like(train_yaws)), rendered_crops(held_yaws, np.zeros_like(held_yaws))
    frontal = resize_crops(rendered_crops([0.0], [0.0]), size)
    painted = np.repeat(frontal, len(train), axis=0)
    masks = np.full(painted.shape[:3], 255, np.uint8)
    swap_turn = follow.fit_swap_turn(resize_crops(train, size), crop_poses(train), painted, masks, share=1.0,
                                     read_size=256, seed=0)
    with torch.no_grad():
        faces = np.repeat(frontal, len(held), axis=0)
        face, mask = swap_turn(follow.as_images(resize_crops(held, size)), follow.as_images(faces),
                               follow.as_images(masks[:len(held), ..., None]), torch.ones(1))
    read = follow.painted_poses(follow.as_crops(face), follow.as_crops(mask)[..., 0], 256)[:, 0]
    target = crop_poses(held)[:, 0]
    assert np.isfinite(read).all()
    assert correlation(read, target) > 0.9, (read, target)
    assert np.abs(read - target).mean() < 6.0, (read, target)  # degrees: turned about as far, not only the same way
