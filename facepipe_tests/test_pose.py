"""The readers pose_follow and mouth_follow use (facepipe.models.pose): FaceMesh's pose and mouth
of a crop read on the crop itself, and a small CNN that learns to read them back on faces it has
not seen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facepipe.align import align_face
from facepipe.evaluate import correlation, six_point_pose
from facepipe.faces import resize_crops
from facepipe.landmarks import detect_static
from facepipe.models.augment import faces_to_tensors
from facepipe.models.pose import (READER_TURNS_DEG, MaskYawReadout, PointPoseReader, PoseReader, crop_measures, crop_poses,
                                  crop_readings, fit_mask_yaw_readout, fit_point_pose, kept, mirrored_points,
                                  train_point_pose_reader, train_pose_reader, turned_crops)
from facepipe.sample import HeadPose, Lighting, hopper_face, render_frame

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 48


def rendered_crops(yaws, pitches) -> np.ndarray:
    """The sample's hopper face rendered at each (yaw, pitch) and aligned as the faces asset aligns."""
    face = hopper_face(256)
    crops = []
    for yaw, pitch in zip(yaws, pitches):
        frame, _ = render_frame(face, HeadPose(yaw_deg=float(yaw), pitch_deg=float(pitch)), Lighting())
        crops.append(align_face(frame, detect_static(frame), 256)[0])
    return np.stack(crops)


@pytest.fixture(scope="module")
def turning_faces():
    """Faces turning -24..24 deg (pitch -8..8) in a grid, and between-grid faces held out."""
    yaws, pitches = np.meshgrid(np.arange(-24.0, 25.0, 8.0), np.array([-8.0, 0.0, 8.0]))
    held_yaws, held_pitches = np.array([-20.0, -12.0, -4.0, 4.0, 12.0, 20.0]), np.array([-4.0, 4.0, -4.0, 4.0, -4.0, 4.0])
    return rendered_crops(yaws.ravel(), pitches.ravel()), rendered_crops(held_yaws, held_pitches)


def tensors(crops: np.ndarray) -> torch.Tensor:
    return faces_to_tensors(resize_crops(crops, SIZE), np.full((len(crops), SIZE, SIZE), 255, np.uint8))[0]


def test_crop_poses_reads_the_turn_and_no_face_as_nan(turning_faces):
    crops, _ = turning_faces
    with_blank = np.concatenate([crops[:7], np.zeros((1, 256, 256, 3), np.uint8)])
    poses, measures = crop_poses(with_blank), crop_measures(with_blank)
    assert poses.shape == (8, 2) and measures.shape == (8, 3)
    assert np.isnan(poses[-1]).all() and np.isfinite(poses[:-1]).all()
    assert np.all(np.diff(poses[:7, 0]) > 0), f"yaw does not rise with the rendered turn: {poses[:7, 0]}"
    # the mouth's opening beside the same pose, NaN where no face
    np.testing.assert_array_equal(measures[:, :2], poses)
    assert np.isnan(measures[-1, 2]) and (measures[:-1, 2] >= 0).all()


def test_pose_reader_reads_the_pose_of_faces_it_has_not_seen_and_is_seeded(turning_faces):
    crops, held = turning_faces
    poses, held_poses = crop_poses(crops), crop_poses(held)
    poses[0] = np.nan  # a face FaceMesh missed is left out, not learnt as a pose
    reader = train_pose_reader(tensors(crops), poses, seed=0, epochs=60)
    assert not any(p.requires_grad for p in reader.parameters()) and not reader.training
    with torch.no_grad():
        read = reader(tensors(held)).numpy()
        mirrored = reader(tensors(held).flip(-1)).numpy()
    assert correlation(read[:, 0], held_poses[:, 0]) > 0.9, f"yaw read {read[:, 0]} against {held_poses[:, 0]}"
    assert np.abs(read[:, 0] - held_poses[:, 0]).mean() < 5.0  # in degrees, not in the training's units
    # it learnt the mirror images too: a mirrored face reads turned the other way
    assert correlation(mirrored[:, 0], -held_poses[:, 0]) > 0.9
    # in degrees about no particular pose: a head held 30 deg lower reads 30 deg lower
    lowered = train_pose_reader(tensors(crops), poses + np.array([0.0, -30.0]), seed=0, epochs=60)
    with torch.no_grad():
        assert np.abs(lowered(tensors(held)).numpy()[:, 1] - (held_poses[:, 1] - 30.0)).mean() < 5.0
    again = train_pose_reader(tensors(crops), poses, seed=0, epochs=60)
    assert all(torch.equal(a, b) for a, b in zip(reader.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="at least 8 faces"):
        train_pose_reader(tensors(crops[:3]), poses[:3])
    with pytest.raises(ValueError, match="divisible by 16"):
        PoseReader(40)


def test_a_reader_of_a_measure_mirror_images_keep_reads_it_alike_on_both(turning_faces):
    """As mouth_follow's reader learns the mouth's opening: here how far each face turns either way,
    which a mirror image keeps as the opening is kept."""
    crops, held = turning_faces
    far = np.abs(crop_poses(crops)[:, :1])
    reader = train_pose_reader(tensors(crops), far, seed=0, epochs=60, mirror=kept)
    assert reader.head.out_features == 1
    with torch.no_grad():
        read, mirrored = reader(tensors(held)).numpy()[:, 0], reader(tensors(held).flip(-1)).numpy()[:, 0]
    truth = np.abs(crop_poses(held)[:, 0])
    assert correlation(read, truth) > 0.8 and correlation(mirrored, truth) > 0.8, (read, mirrored, truth)


def test_crop_readings_give_the_six_points_the_pose_is_solved_from_and_their_mirror_images(turning_faces):
    crops, _ = turning_faces
    measures, points = crop_readings(crops[:7])
    np.testing.assert_array_equal(measures, crop_measures(crops[:7]))
    assert points.shape == (7, 12) and ((points > 0) & (points < 1)).all()  # units of the crop's side
    np.testing.assert_allclose(six_point_pose(points.reshape(7, 6, 2) * 256, 256)[:, :2], measures[:, :2], atol=1e-6)
    # a mirror image's points are the points mirrored, each corner becoming the other side's
    _, flipped = crop_readings(np.ascontiguousarray(crops[:7, :, ::-1]))
    assert np.abs(flipped - mirrored_points(points)).max() < 0.02
    np.testing.assert_allclose(mirrored_points(mirrored_points(points)), points)


def test_point_pose_solves_the_pose_from_the_six_points_as_pnp_does(turning_faces):
    crops, held = turning_faces
    _, points = crop_readings(crops)
    _, held_points = crop_readings(held)
    pose = fit_point_pose(points, seed=0, steps=2000)
    assert not any(p.requires_grad for p in pose.parameters()) and not pose.training
    truth = six_point_pose(held_points.reshape(-1, 6, 2) * 256, 256)[:, :2]
    with torch.no_grad():
        solved = pose(torch.from_numpy(held_points).float()).numpy()
        # where the face sits in the crop and its size do not matter
        moved = pose(torch.from_numpy(held_points * 0.8 + 0.1).float()).numpy()
    assert np.abs(solved - truth).mean() < 2.0, (solved, truth)
    np.testing.assert_allclose(moved, solved, atol=1e-4)
    again = fit_point_pose(points, seed=0, steps=2000)
    assert all(torch.equal(a, b) for a, b in zip(pose.state_dict().values(), again.state_dict().values()))


def test_point_pose_reader_reads_the_pose_of_faces_it_has_not_seen_through_their_points(turning_faces):
    crops, held = turning_faces
    _, points = crop_readings(crops)
    held_poses = crop_poses(held)
    reader = train_point_pose_reader(tensors(crops), points, seed=0)
    assert not any(p.requires_grad for p in reader.parameters()) and not reader.training
    with torch.no_grad():
        read, mirrored = reader(tensors(held)).numpy(), reader(tensors(held).flip(-1)).numpy()
    assert read.shape == (len(held), 2)
    assert correlation(read[:, 0], held_poses[:, 0]) > 0.9, f"yaw read {read[:, 0]} against {held_poses[:, 0]}"
    assert np.abs(read[:, 0] - held_poses[:, 0]).mean() < 5.0  # degrees
    assert correlation(mirrored[:, 0], -held_poses[:, 0]) > 0.9  # a mirror image turns the other way
    empty = PointPoseReader.empty(SIZE)
    empty.load_state_dict(reader.state_dict())
    with torch.no_grad():
        assert torch.equal(empty.eval()(tensors(held)), reader(tensors(held)))


def outline_logits(shifts) -> torch.Tensor:
    """Mask logits [N, 1, 48, 48] of an elliptic face outline moved sideways by each shift (px), as a
    turned face's outline moves in its aligned crop."""
    rows, columns = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij")
    return torch.stack([(1 - ((columns - 24 - shift) / 14) ** 2 - ((rows - 26) / 18) ** 2)[None] * 8 for shift in shifts])


def test_mask_yaw_readout_reads_the_turn_where_the_outline_sits():
    shifts = np.linspace(-6.0, 6.0, 13)
    yaws = 5.0 * shifts + 3.0  # degrees
    yaws[1] = np.nan  # a face FaceMesh missed is left out
    readout = fit_mask_yaw_readout(outline_logits(shifts), yaws)
    assert isinstance(readout, MaskYawReadout) and not readout.training
    held = np.array([-4.5, -1.5, 2.5, 5.5])  # between the fitted shifts
    with torch.no_grad():
        read = readout(outline_logits(held))[:, 0].numpy()
    np.testing.assert_allclose(read, 5.0 * held + 3.0, atol=1.5)
    with pytest.raises(ValueError, match="at least 8 faces"):
        fit_mask_yaw_readout(outline_logits(shifts[:5]), yaws[:5])


def test_turned_crops_read_as_turned_both_ways_beyond_the_faces_own_poses():
    crops = rendered_crops(np.array([-4.0, 0.0, 4.0]), np.zeros(3))
    blank = np.zeros((1, 256, 256, 3), np.uint8)  # no face: no points, so no turned copy of it
    masks = np.full((4, 256, 256), 255, np.uint8)
    images, poses = turned_crops(np.concatenate([crops, blank]), masks, SIZE)
    own = crop_poses(crops)[:, 0]
    assert images.shape == (len(READER_TURNS_DEG) * 3, 3, SIZE, SIZE) and poses.shape == (len(READER_TURNS_DEG) * 3, 2)
    assert np.isfinite(poses).all()
    # Each turn's copies in order of READER_TURNS_DEG (-15, -10, 10, 15): turned away from the faces' own yaws,
    # the wider turns further, and beyond the span the faces themselves cover.
    yaws = poses[:, 0].reshape(len(READER_TURNS_DEG), 3).mean(axis=1)
    assert np.all(np.diff(yaws) > 0), f"the turned copies' yaw does not rise with the turn: {yaws}"
    assert yaws[0] < own.min() - 5 and yaws[-1] > own.max() + 5, f"turned copies {yaws} within the faces' own {own}"
