"""The pair LoRA adapter (facepipe.models.pair, facepipe.train.tasks.pair) and the swap evaluation (facepipe.evaluate), on real
aligned faces: Grace Hopper (identity) and Eileen Collins (target), public-domain photos
re-rendered as moving heads by facepipe.sample, landmarked by MediaPipe, aligned by facepipe.align.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import shutil

import cv2
import matplotlib
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import safetensors.torch
import torch
from peft.tuners.lora import LoraLayer

from facepipe.align import align_face, template_points
from facepipe.assets.pair import pose_matched_identity
from facepipe.embed import DlibEmbedder
from facepipe.evaluate import (
    correlation,
    crop_landmarks,
    evaluate_swaps,
    head_pose,
    mean_identity_face,
    most_frontal_face,
    mouth_opening,
)
from facepipe.export import export_dfm
from facepipe.faces import FaceSet, resize_crops
from facepipe.landmarks import detect_landmarks, detect_static
from facepipe.models.augment import AugmentConfig, faces_to_tensors, turned_faces
from facepipe.models.autoencoder import AutoencoderConfig, IdentityAutoencoder
from facepipe.models.pair import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    SWAP_LATENT_OFFSET,
    SWAP_POSE_DIRECTIONS,
    AdapterConfig,
    PairModel,
    adapter_counts,
    adapter_state,
    base_state,
    load_adapter,
    load_adapter_tensors,
    merge_adapters,
    merged_swap_model,
    mouth_step_faces,
    pose_directions,
    pose_matched_weights,
    save_adapter,
    set_pose_follow,
    set_swap_offset,
    swap_latents,
    swap_latents_of,
)
from facepipe.models import pose
from facepipe.models.pose import MaskYawReadout, PointPoseReader, painted_change
from facepipe.models.swap import DFM_INPUT, DFM_MORPH_INPUT, dfm_input, swap_faces
from facepipe.models.turn import turn_grid
from facepipe.profile import build_profile, crop_sharpness
from facepipe.sample import HeadPose, Lighting, astronaut_face, hopper_face, render_frame, render_head_frames
from facepipe.train import TrainConfig, train_model
from facepipe.train.tasks.pair import PairTask
from facepipe.train.tasks.reconstruction import ReconstructionTask

STORED_SIZE = 256
FRAMES = 8
# Tiny on purpose (shared CPU); rank 2 keeps this small model's adapter under the 5 % budget
# (the share test below checks the default rank on the default model).
TINY = AutoencoderConfig(size=48, width=8, latent_dim=128, depth=3)
# At swap gain 1 the swap reads the adapted latent as it is (the gain has a test of its own).
TINY_ADAPTER = AdapterConfig(rank=2, alpha=4.0, swap_gain=1.0)
HOLDOUT_EVERY = 4  # 8 faces → faces 2 and 6 held out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def moving_faces(person: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned crops [8, 256, 256, 3], hull masks and crop landmarks of a turning, relit head."""
    face = hopper_face(160) if person == "hopper" else astronaut_face(160)
    frames, _ = render_head_frames(face, FRAMES, size=160, seed=0 if person == "hopper" else 1)
    detected = detect_landmarks([(frame, person) for frame in frames])
    assert detected.detected.all(), f"MediaPipe lost the {person} face in a rendered frame"
    aligned = [align_face(frame, points, STORED_SIZE) for frame, points in zip(frames, detected.points)]
    return tuple(np.stack([item[part] for item in aligned]) for part in range(3))


def pair_train_config(epochs: int, key: str = "pair") -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=4, lr=5e-3, resume_key=key, seed=3, cpu_threads=1)


@pytest.fixture(autouse=True)
def quick_point_pose(monkeypatch):
    """The six points' MLP learns in fewer steps: these tests check what the reader is wired to, not
    how well it reads (test_pose does), and the build's 10,000 steps cost ~25 s a reader."""
    monkeypatch.setattr(pose, "POINT_POSE_STEPS", 500)


def train_pair(identity_weights, run_dir, epochs: int):
    """The pair adapter trained on the saved identity model (the folder of `identity_weights`)."""
    identity_crops, identity_masks, _ = moving_faces("hopper")
    target_crops, target_masks, _ = moving_faces("astronaut")
    task = PairTask.from_faces(identity_weights.parent, identity_crops, identity_masks, target_crops, target_masks,
                               holdout_every=HOLDOUT_EVERY, samples_per_epoch=16, adapter=TINY_ADAPTER)
    return train_model(task, pair_train_config(epochs), run_dir, log=lambda line: None)


@pytest.fixture(scope="module")
def identity_weights(tmp_path_factory):
    """A (briefly) trained identity model's safetensors file, in its saved folder as identity_model writes it."""
    crops, masks, _ = moving_faces("hopper")
    config = TrainConfig(epochs=3, batch_size=4, lr=2e-3, resume_key="identity", cpu_threads=1)
    task = ReconstructionTask.from_faces(crops, masks, TINY, holdout_every=HOLDOUT_EVERY, samples_per_epoch=16)
    trained = train_model(task, config, tmp_path_factory.mktemp("identity"), log=lambda line: None)
    folder = tmp_path_factory.mktemp("identity_model")
    trained.model.save(folder)
    assert (folder / "model.safetensors").read_bytes() == trained.result.weights_path.read_bytes()
    return folder / "model.safetensors"


@pytest.fixture(scope="module")
def trained_pair(identity_weights, tmp_path_factory):
    return train_pair(identity_weights, tmp_path_factory.mktemp("pair"), epochs=4)


def target_tensors() -> torch.Tensor:
    crops, masks, _ = moving_faces("astronaut")
    return faces_to_tensors(resize_crops(crops, TINY.size), resize_crops(masks, TINY.size))[0]


# ---------------------------------------------------------------------------------------------
# LoRA wiring and training


def test_default_rank_adapter_stays_within_five_percent_and_too_large_a_rank_is_refused():
    torch.manual_seed(0)
    model = PairModel(IdentityAutoencoder(AutoencoderConfig()), AdapterConfig())
    print(f"\ndefault CPU model, rank 8: {model.adapter_parameters} adapter parameters = "
          f"{100 * model.adapter_share:.2f}% of {model.base_parameters}")
    assert 0 < model.adapter_share <= 0.05
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == set(adapter_state(model)) - {SWAP_LATENT_OFFSET}  # set after training
    # Both sets exist: shared on encoder + bottleneck, target on the decoder copy only.
    assert any(name.startswith("autoencoder.encoder.") for name in trainable)
    assert any(name.startswith("autoencoder.bottleneck.") for name in trainable)
    assert any(name.startswith("target_decoder.") for name in trainable)
    assert not any(name.startswith("autoencoder.decoder.") for name in trainable)
    with pytest.raises(ValueError, match="lower the rank"):
        PairModel(IdentityAutoencoder(TINY), AdapterConfig(rank=8))


def test_training_moves_only_the_adapter_and_saves_only_its_tensors(trained_pair, identity_weights):
    model = trained_pair.model
    base = safetensors.torch.load_file(str(identity_weights))
    inside = base_state(model)
    assert set(inside) == set(base)
    assert all(torch.equal(inside[name], base[name]) for name in base), "the frozen base changed in training"
    # The identity path's decoder is the base decoder itself.
    saved = safetensors.torch.load_file(str(trained_pair.result.weights_path))
    assert set(saved) == set(adapter_state(model))
    assert all(".lora_" in name for name in saved if name != SWAP_LATENT_OFFSET)
    assert torch.equal(saved[SWAP_LATENT_OFFSET], torch.zeros(TINY.latent_dim))  # set after training, not in it
    assert any(name.startswith("target_decoder.") for name in saved)
    # lora_B starts at zero: a non-zero B is a delta that training produced.
    assert all(saved[name].abs().max() > 0 for name in saved if ".lora_B." in name)
    counts = adapter_counts(trained_pair.model)
    assert counts["adapter_parameters"] == sum(t.numel() for n, t in saved.items() if n != SWAP_LATENT_OFFSET)
    assert counts["adapter_share"] <= 0.05
    # Starting from a zero delta, the target path learns the target's faces.
    assert trained_pair.result.final_metrics["holdout_target_l1"] < trained_pair.initial_metrics["holdout_target_l1"]
    assert list(trained_pair.task.target_held.numpy()) == [2, 6]


def test_resume_gives_the_same_adapter_bytes(trained_pair, identity_weights, tmp_path):
    halfway = train_pair(identity_weights, tmp_path, epochs=2)
    assert halfway.result.resumed_from_epoch == 0
    resumed = train_pair(identity_weights, tmp_path, epochs=4)  # a new task object, same run dir and key
    assert resumed.result.resumed_from_epoch == 2
    assert resumed.result.weights_path.read_bytes() == trained_pair.result.weights_path.read_bytes()


def test_merged_swap_model_is_adapted_encoder_then_base_decoder(trained_pair, identity_weights):
    model = trained_pair.model
    base = IdentityAutoencoder.from_folder(identity_weights.parent)
    merged = merge_adapters(base, adapter_state(model), TINY_ADAPTER)
    assert not any(isinstance(module, LoraLayer) for module in merged.swap.modules()), "merge_and_unload left LoRA layers"
    images = target_tensors()
    with torch.no_grad():
        code = model.encode(images)
        expected_bgr, expected_logits = model.identity_decode(code)
        swap_bgr, swap_logits = merged.swap(images)
        expected_mask = torch.sigmoid(model.target_decode(code)[1])
        mask = merged.target_face_mask(images)
    assert torch.allclose(swap_bgr, expected_bgr, atol=1e-5) and torch.allclose(swap_logits, expected_logits, atol=1e-4)
    assert torch.allclose(mask, expected_mask, atol=1e-5)
    # The decoder is the base's, the encoder carries the delta; the base model object is untouched.
    merged_weights = merged.swap.state_dict()
    base_weights = safetensors.torch.load_file(str(identity_weights))
    assert all(torch.equal(merged_weights[n], base_weights[n]) for n in base_weights if n.startswith("decoder."))
    assert not torch.equal(merged_weights["bottleneck.to_latent.weight"], base_weights["bottleneck.to_latent.weight"])
    assert all(torch.equal(t, base_weights[n]) for n, t in base.state_dict().items())
    # The swap differs from a plain reconstruction by the identity model.
    with torch.no_grad():
        assert (merged.swap(images)[0] - base(images)[0]).abs().max() > 1e-3


def test_swap_latent_offset_moves_only_the_swap_and_is_folded_into_the_merge(trained_pair, identity_weights):
    model, task = copy.deepcopy(trained_pair.model), trained_pair.task
    identity_images, target_images = task.identity_images[task.identity_train], task.target_images[task.target_train]
    images = target_tensors()
    with torch.no_grad():
        before = model(images)[0]
        offset = set_swap_offset(model, identity_images, target_images)
        # the swap's latents of the target's faces are centred where the identity's are
        moved = model.latent(target_images) + model.swap_latent_offset
        assert torch.allclose(moved.mean(0), model.latent(identity_images).mean(0), atol=1e-4)
        assert offset.norm() > 0 and (model(images)[0] - before).abs().max() > 1e-3
        merged = merge_adapters(IdentityAutoencoder.from_folder(identity_weights.parent), adapter_state(model), TINY_ADAPTER)
        assert torch.allclose(merged.swap(images)[0], model(images)[0], atol=1e-5)
        # the target path (the exported input-face mask) reads the latent without the offset
        expected_mask = torch.sigmoid(model.target_decode(model.encode(images))[1])
        assert torch.allclose(merged.target_face_mask(images), expected_mask, atol=1e-5)


def test_pose_matched_weights_give_the_identity_the_targets_poses():
    # identity faces turned left, frontal and right; the target only ever turns right
    identity = np.array([[-10.0, 0.0], [-9.0, 1.0], [0.0, 0.0], [1.0, -1.0], [10.0, 0.0], [11.0, 1.0]])
    target = np.array([[10.5, 0.5], [9.0, 0.0], [12.0, 1.0]])
    weights = pose_matched_weights(identity, target, neighbours=2)
    np.testing.assert_allclose(weights, [0, 0, 0, 0, 0.5, 0.5])
    assert weights @ identity[:, 0] > 10  # the weighted identity turns as the target does
    # more neighbours than faces: every face counts, each target face alike
    np.testing.assert_allclose(pose_matched_weights(identity, target, neighbours=50), np.full(6, 1 / 6))
    with pytest.raises(ValueError, match="pose matching needs faces on both sides"):
        pose_matched_weights(identity, np.zeros((0, 2)))


def test_pose_matching_adds_the_replays_faces_turned_both_ways(identity_weights):
    crops, masks, landmarks = moving_faces("hopper")
    target_crops, target_masks, target_landmarks = moving_faces("astronaut")
    task = PairTask.from_faces(identity_weights.parent, crops, masks, target_crops, target_masks,
                               holdout_every=HOLDOUT_EVERY, adapter=TINY_ADAPTER, augment=AugmentConfig(turn=0.5, turn_deg=15.0))
    identity = FaceSet(crops, masks, landmarks, pd.DataFrame())
    target = FaceSet(target_crops, target_masks, target_landmarks, pd.DataFrame())
    images, poses, target_poses = pose_matched_identity(task, identity, target, mirrored=False)
    faces = len(task.identity_train)
    assert len(images) == len(poses) == 3 * faces and target_poses.shape == (len(task.target_train), 3)
    # The faces as they are, then turned 15 deg one way and the other: read well over the pose's
    # noise (1-3 deg) away from the unturned faces, face by face, in opposite directions.
    plain, left, right = poses[:faces, 0], poses[faces:2 * faces, 0], poses[2 * faces:, 0]
    assert (left - plain < -5).all() and (right - plain > 5).all(), (plain, left, right)
    # The copies come from the turn table's widest columns: the faces a fresh solve turns by 15 deg.
    points = task.identity_points[task.identity_train.numpy()]
    solved, _ = turned_faces(images[:faces], task.identity_masks[task.identity_train],
                             np.stack([turn_grid(p, np.radians(15.0), TINY.size) for p in points]))
    torch.testing.assert_close(images[2 * faces:], solved, atol=1e-4, rtol=0)
    mirrored, mirrored_poses, _ = pose_matched_identity(task, identity, target, mirrored=True)
    assert len(mirrored) == 6 * faces
    np.testing.assert_allclose(mirrored_poses[3 * faces:, 0], -poses[:, 0])
    np.testing.assert_allclose(mirrored_poses[3 * faces:, 1:], poses[:, 1:])  # pitch and the mouth's opening kept


def test_both_tasks_cut_their_inputs_from_the_stored_crops_when_asked(identity_weights):
    """With runtime_crop the tasks keep the faces as stored (256 px, 8-bit) and feed the encoder
    crops cut from them: the same draws give a different loss; without it nothing is kept."""
    crops, masks, _ = moving_faces("hopper")
    target_crops, target_masks, _ = moving_faces("astronaut")
    stored = torch.from_numpy(crops).permute(0, 3, 1, 2)

    def pair_task(share: float) -> PairTask:
        return PairTask.from_faces(identity_weights.parent, crops, masks, target_crops, target_masks,
                                   holdout_every=HOLDOUT_EVERY, adapter=TINY_ADAPTER, augment=AugmentConfig(runtime_crop=share))

    def reconstruction_task(share: float) -> ReconstructionTask:
        return ReconstructionTask.from_faces(crops, masks, TINY, holdout_every=HOLDOUT_EVERY,
                                             augment=AugmentConfig(runtime_crop=share))

    def first_loss(task) -> float:
        torch.manual_seed(0)
        model = task.build_model()
        with torch.no_grad():
            return float(task.compute_loss(model, torch.arange(4), torch.Generator().manual_seed(1), torch.device("cpu")))

    plain, cut = pair_task(0.0), pair_task(1.0)
    assert plain.identity_sources is None and plain.target_sources is None
    assert torch.equal(cut.identity_sources, stored) and cut.target_sources.shape == (FRAMES, 3, STORED_SIZE, STORED_SIZE)
    assert cut.identity_sources.dtype == torch.uint8
    plain_reconstruction, cut_reconstruction = reconstruction_task(0.0), reconstruction_task(1.0)
    assert plain_reconstruction.sources is None and torch.equal(cut_reconstruction.sources, stored)
    for without, with_cut in ((plain, cut), (plain_reconstruction, cut_reconstruction)):
        assert first_loss(without) == first_loss(without)  # the same draws give the same loss
        assert abs(first_loss(with_cut) - first_loss(without)) > 1e-6


def test_weighted_swap_latent_offset_is_the_weighted_identity_mean(trained_pair):
    model, task = copy.deepcopy(trained_pair.model), trained_pair.task
    identity_images, target_images = task.identity_images[task.identity_train], task.target_images[task.target_train]
    weights = np.zeros(len(identity_images))
    weights[[0, 2]] = 0.5
    with torch.no_grad():
        offset = set_swap_offset(model, identity_images, target_images, weights)
        expected = model.latent(identity_images[[0, 2]]).mean(0) - model.latent(target_images).mean(0)
    assert torch.allclose(offset, expected, atol=1e-5)


def test_saved_adapter_rebuilds_the_merged_model_and_exports_as_dfm(trained_pair, identity_weights, tmp_path):
    weights_path, config_path = save_adapter(trained_pair.model, identity_weights, tmp_path / "adapter")
    assert weights_path.name == ADAPTER_WEIGHTS_FILE and config_path.name == ADAPTER_CONFIG_FILE
    first = (weights_path.read_bytes(), config_path.read_bytes())
    save_adapter(trained_pair.model, identity_weights, tmp_path / "adapter")
    assert (weights_path.read_bytes(), config_path.read_bytes()) == first, "adapter files are not byte-stable"
    description = json.loads(config_path.read_text())
    assert description["adapter_config"]["rank"] == 2 and description["base"]["model_config"] == TINY.to_dict()
    assert description["adapter_share"] <= 0.05

    merged = merged_swap_model(identity_weights, tmp_path / "adapter")
    crops, _, _ = moving_faces("astronaut")
    small = resize_crops(crops, TINY.size)
    exported = export_dfm(merged.dfm_model(), TINY.size, tmp_path / "pair.dfm", list(small[:3]))
    assert exported.max_abs_error <= 1e-4
    # Run as FaceFusion's deep_swapper does: one NHWC BGR [0, 1] crop in (and morph_value:0 at its
    # default, 1: the full swap), three outputs in order.
    session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
    face_mask, celeb_face, celeb_mask = session.run(None, {DFM_INPUT: dfm_input(small[0]), DFM_MORPH_INPUT: np.float32([1.0])})
    swapped = swap_faces(merged.dfm_model(), crops[:1], TINY.size)
    assert np.abs(celeb_face[0] * 255 - swapped.faces[0]).max() <= 1.0
    assert np.abs(face_mask[0, ..., 0] * 255 - swapped.face_masks[0]).max() <= 1.0
    assert celeb_mask.shape == (1, TINY.size, TINY.size, 1)

    # An adapter is tied to the base weights it was trained on.
    other = tmp_path / "other_identity.safetensors"
    shutil.copy(identity_weights, other)
    tensors = safetensors.torch.load_file(str(other))
    tensors["decoder.to_bgr.bias"] = tensors["decoder.to_bgr.bias"] + 0.01
    safetensors.torch.save_file(tensors, str(other))
    with pytest.raises(ValueError, match="retrain lora_adapter"):
        merged_swap_model(other, tmp_path / "adapter")


def test_masks_of_zero_and_one_are_refused(identity_weights, tmp_path):
    crops, masks, _ = moving_faces("astronaut")
    with pytest.raises(ValueError, match="scale them to 0..255"):
        PairTask.from_faces(identity_weights.parent, crops, masks, crops, (masks > 0).astype(np.uint8), adapter=TINY_ADAPTER)


# ---------------------------------------------------------------------------------------------
# Evaluation


def turned_crop(person_face: np.ndarray, yaw: float) -> np.ndarray:
    frame, _ = render_frame(person_face, HeadPose(yaw_deg=yaw), Lighting())
    return align_face(frame, detect_static(frame), STORED_SIZE)[0]


def test_pose_follows_the_turn_and_flips_sign_in_a_mirror():
    face = hopper_face(256)
    crops = np.stack([turned_crop(face, yaw) for yaw in (-25.0, 0.0, 25.0)])
    mirrored = np.ascontiguousarray(crops[:, :, ::-1])
    landmarks, detected = crop_landmarks(np.concatenate([crops, mirrored]))
    assert detected.all()
    poses = head_pose(landmarks, STORED_SIZE)
    yaw, yaw_mirrored = poses[:3, 0], poses[3:, 0]
    assert yaw[0] < -10 < yaw[1] - 10 < yaw[2] - 20, f"yaw does not follow the rendered turn: {yaw}"
    assert np.sign(yaw[[0, 2]]).tolist() == [-1, 1]
    assert np.allclose(yaw_mirrored, -yaw, atol=4.0), f"mirror yaw {yaw_mirrored} vs {yaw}"
    assert np.all(np.abs(poses[:, 2]) < 5), "aligned crops should be level (roll near 0)"


def opened_mouth(crop: np.ndarray, landmarks: np.ndarray, drop: float) -> np.ndarray:
    """The crop with everything below the lips pulled down by up to ``drop`` px (fading out
    sideways and towards the chin): the lips part the way a jaw drop parts them."""
    size = crop.shape[0]
    lip_y = (landmarks[13, 1] + landmarks[14, 1]) / 2
    centre_x = (landmarks[61, 0] + landmarks[291, 0]) / 2
    half_width = (landmarks[291, 0] - landmarks[61, 0]) * 0.8
    chin_y = landmarks[152, 1] + 10
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    below = 0.5 * (1 + np.tanh((ys - lip_y) / 3.0))
    sideways = np.clip(1 - ((xs - centre_x) / half_width) ** 2, 0, 1)
    towards_chin = np.where(ys > lip_y, np.clip((chin_y - ys) / (chin_y - lip_y), 0, 1), 1)
    shift = (drop * below * sideways * towards_chin).astype(np.float32)
    return cv2.remap(crop, xs, ys - shift, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_mouth_opening_grows_as_the_lips_part():
    photo = cv2.imread(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"))
    crop, _, landmarks, _ = align_face(photo, detect_static(photo), STORED_SIZE)
    crops = np.stack([opened_mouth(crop, landmarks, drop) for drop in (0.0, 8.0, 16.0)])
    found, detected = crop_landmarks(crops)
    assert detected.all()
    opening = mouth_opening(found)
    assert opening[0] < 0.02 and opening[0] < opening[1] < opening[2], f"mouth opening {opening}"


def test_painted_change_reads_a_turn_and_an_opening_mouth_as_facemesh_does():
    face = hopper_face(256)
    left, right = (faces_to_tensors(np.stack([turned_crop(face, yaw)]), np.zeros((1, STORED_SIZE, STORED_SIZE), np.uint8))[0]
                   for yaw in (-10.0, 10.0))
    yaw, pitch, opening = painted_change(left, right, STORED_SIZE)
    assert 12.0 < yaw < 30.0 and abs(pitch) < 5.0 and abs(opening) < 0.01, (yaw, pitch, opening)
    assert np.array_equal(painted_change(right, right, STORED_SIZE), np.zeros(3))
    photo = cv2.imread(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"))
    crop, _, landmarks, _ = align_face(photo, detect_static(photo), STORED_SIZE)
    shut, opened = (faces_to_tensors(opened_mouth(crop, landmarks, drop)[None], np.zeros((1, STORED_SIZE, STORED_SIZE), np.uint8))[0]
                    for drop in (0.0, 16.0))
    yaw, pitch, opening = painted_change(shut, opened, STORED_SIZE)
    # FaceMesh reads a jaw dropping this far (an opening of ~0.1) as a few degrees of turn too, far less than a turn
    assert abs(yaw) < 5.0 and abs(pitch) < 5.0 and opening > 0.05, (yaw, pitch, opening)
    blank = torch.zeros(1, 3, STORED_SIZE, STORED_SIZE)
    assert np.isnan(painted_change(blank, blank, STORED_SIZE)).all()


def test_correlation_of_a_constant_series_is_zero():
    assert correlation(np.array([1.0, 1.0, 1.0]), np.array([0.0, 1.0, 2.0])) == 0.0
    assert correlation(np.array([0.0, 1.0, 2.0]), np.array([0.0, 2.0, 4.0])) == pytest.approx(1.0)
    assert np.isnan(correlation(np.array([0.0, 1.0]), np.array([1.0, 0.0])))


@pytest.fixture(scope="module")
def hopper_profile():
    embedder = DlibEmbedder()
    crops, _, landmarks = moving_faces("hopper")
    embeddings = embedder.embed(crops, np.repeat(template_points(STORED_SIZE)[None], len(crops), axis=0))
    profile, _ = build_profile("hopper", embeddings, embedder.describe(), np.ones(len(crops)),
                               crop_sharpness(crops), landmarks, STORED_SIZE)
    return profile, embedder


def test_a_perfect_swap_follows_the_target_and_the_pasted_identity_does_not(hopper_profile):
    profile, embedder = hopper_profile
    identity_crops, _, identity_landmarks = moving_faces("hopper")
    target_crops, _, _ = moving_faces("astronaut")
    baseline_face = mean_identity_face(identity_crops)
    # Oracle: the "swap" is the target itself — it follows perfectly and transfers no identity.
    evaluation = evaluate_swaps(target_crops, target_crops, profile, embedder, baseline_face)
    summary = evaluation.summary()
    json.dumps(summary, allow_nan=False)
    swap, baseline, identity = summary["swap_following"], summary["baseline_following"], summary["identity"]
    assert swap["faces_compared"] == FRAMES and swap["pose_mae_deg"] == 0.0 and swap["mouth_mae"] == 0.0
    assert swap["yaw_corr"] == pytest.approx(1.0) and swap["pose_corr"] == pytest.approx(1.0)
    # (the expanded-square Euclidean distance of two equal embeddings is 0 only up to rounding)
    assert identity["identity_transfer_gain"] == 0.0 and identity["swap_to_target_distance_mean"] == pytest.approx(0, abs=1e-6)
    # The pasted identity face: the identity (close to the profile), but it cannot follow.
    assert baseline["faces_compared"] == FRAMES, "MediaPipe found no face in the mean identity face"
    assert identity["baseline_distance_mean"] < profile["distance_threshold"] < identity["target_distance_mean"]
    assert baseline["yaw_corr"] == 0.0 and baseline["pose_corr"] == 0.0
    assert baseline["yaw_mae_deg"] > 8.0 and summary["pose_following_margin_deg"] > 3.0
    # The most frontal identity crop as the baseline: also a face, also not following.
    frontal = most_frontal_face(identity_crops, identity_landmarks)
    frontal_summary = evaluate_swaps(target_crops, target_crops, profile, embedder, frontal).summary()
    assert frontal_summary["pose_following_margin_deg"] > 3.0
    # A swap that ignores its input (always the identity face) scores as the baseline does.
    ignoring = evaluate_swaps(target_crops, np.repeat(baseline_face[None], FRAMES, axis=0), profile, embedder,
                              baseline_face).summary()
    assert ignoring["identity"]["identity_transfer_gain"] > 0
    assert ignoring["pose_following_margin_deg"] == pytest.approx(0.0, abs=1e-6)


def test_swap_strength_scales_the_encoder_delta_the_swap_reads_and_the_merge_follows(trained_pair, identity_weights, tmp_path):
    model, task = copy.deepcopy(trained_pair.model), trained_pair.task
    base = IdentityAutoencoder.from_folder(identity_weights.parent)
    images = target_tensors()
    with torch.no_grad():
        full = model.latent(images)
        own = base.bottleneck.to_latent(base.encoder(images).flatten(1))
        latents = {}
        for strength in (0.0, 0.5, 1.0):
            model.adapter = dataclasses.replace(TINY_ADAPTER, swap_strength=strength)
            latents[strength] = model.swap_latent(images)
        assert torch.allclose(latents[1.0], full) and torch.allclose(latents[0.0], own, atol=1e-5)
        assert (latents[0.5] - full).abs().max() > 1e-4 and (latents[0.5] - own).abs().max() > 1e-4
        assert torch.equal(model.latent(images), full)  # the trained delta is put back whole
        # At 0.5: the offset is taken on the swap latents and the merged model paints what the PairModel does.
        model.adapter = half = dataclasses.replace(TINY_ADAPTER, swap_strength=0.5)
        set_swap_offset(model, task.identity_images[task.identity_train], task.target_images[task.target_train])
        moved = model.swap_latent(task.target_images[task.target_train]) + model.swap_latent_offset
        assert torch.allclose(moved.mean(0), model.swap_latent(task.identity_images[task.identity_train]).mean(0), atol=1e-4)
        merged = merge_adapters(base, adapter_state(model), half)
        assert torch.allclose(merged.swap(images)[0], model(images)[0], atol=1e-5)
    # A description written before the setting existed reads as the whole delta.
    assert_saved_and_read_as_before_it_existed(model, identity_weights, tmp_path, "swap_strength", 0.5, invalid=1.5)


def assert_saved_and_read_as_before_it_existed(model, identity_weights, tmp_path, field: str, value: float,
                                               invalid: float) -> None:
    """``field`` of the model's adapter (set to ``value``) is saved with the adapter; a description
    written before the field existed reads as 1 (what such adapters were merged with); ``invalid``
    is refused."""
    save_adapter(model, identity_weights, tmp_path / "adapter")
    assert getattr(load_adapter(tmp_path / "adapter").adapter_config, field) == value
    config_path = tmp_path / "adapter" / ADAPTER_CONFIG_FILE
    description = json.loads(config_path.read_text())
    del description["adapter_config"][field]
    config_path.write_text(json.dumps(description))
    assert getattr(load_adapter(tmp_path / "adapter").adapter_config, field) == 1.0
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY_ADAPTER, **{field: invalid})


def test_swap_gain_spreads_the_swap_latents_about_the_identity_mean_and_the_merge_follows(trained_pair, identity_weights, tmp_path):
    model, task = copy.deepcopy(trained_pair.model), trained_pair.task
    identity_images, target_images = task.identity_images[task.identity_train], task.target_images[task.target_train]
    images = target_tensors()
    base = IdentityAutoencoder.from_folder(identity_weights.parent)
    with torch.no_grad():
        latents = model.latent(target_images)
        swaps = {}
        for gain in (1.0, 2.0):
            model.adapter = dataclasses.replace(TINY_ADAPTER, swap_gain=gain)
            set_swap_offset(model, identity_images, target_images)
            moved = gain * latents + model.swap_latent_offset
            # centred on the identity's mean whatever the gain, spread by the gain about it
            assert torch.allclose(moved.mean(0), model.latent(identity_images).mean(0), atol=1e-4)
            assert torch.allclose(moved - moved.mean(0), gain * (latents - latents.mean(0)), atol=1e-4)
            merged = merge_adapters(base, adapter_state(model), model.adapter)
            assert torch.allclose(merged.swap(images)[0], model(images)[0], atol=1e-5)
            swaps[gain] = model(images)[0]
        assert (swaps[2.0] - swaps[1.0]).abs().max() > 1e-3
    # A description written before the setting existed reads as gain 1.
    assert_saved_and_read_as_before_it_existed(model, identity_weights, tmp_path, "swap_gain", 2.0, invalid=0.0)


def readable_measures(images: torch.Tensor) -> np.ndarray:
    """[N, 3] yaw, pitch and a mouth's opening that are functions of the faces (their left-right and
    top-bottom brightness balance, their blue-red balance), so a reader can learn them; three
    independent columns, so the least squares that fits the directions has one answer."""
    half = TINY.size // 2
    sideways = (images[..., :half].mean((1, 2, 3)) - images[..., half:].mean((1, 2, 3))).numpy()
    upright = (images[..., :half, :].mean((1, 2, 3)) - images[..., half:, :].mean((1, 2, 3))).numpy()
    tint = (images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))).numpy()
    return np.column_stack([200 * sideways, 100 * upright, 0.05 + 0.5 * tint])


def readable_points(images: torch.Tensor) -> np.ndarray:
    """[N, 12] six pose points (``pose.crop_readings``' order: nose tip, chin, eye and mouth corners, in
    units of the crop's side) at a face's places, the nose moved sideways and the chin up and down by
    ``readable_measures``' yaw and pitch, so a reader can learn them and PnP reads a turn off them."""
    measures = readable_measures(images)
    template = np.array([[0.5, 0.55], [0.5, 0.85], [0.3, 0.4], [0.7, 0.4], [0.38, 0.7], [0.62, 0.7]])
    points = np.repeat(template[None], len(images), axis=0)
    points[:, 0, 0] += 0.002 * measures[:, 0]
    points[:, 1, 1] += 0.002 * measures[:, 1]
    return points.reshape(len(images), 12)


@pytest.mark.parametrize("reading,mouth", [("crop", 0.0), ("mask", 0.0), ("crop", 1.0), ("mask", 1.0), (None, 1.0)])
def test_pose_and_mouth_follow_move_the_swap_by_what_is_read_and_are_saved_merged_and_exported(
        reading, mouth, trained_pair, identity_weights, tmp_path):
    model, task = copy.deepcopy(trained_pair.model), trained_pair.task
    identity_images, target_images = task.identity_images[task.identity_train], task.target_images[task.target_train]
    images = target_tensors()
    base = IdentityAutoencoder.from_folder(identity_weights.parent)
    model.adapter = dataclasses.replace(TINY_ADAPTER, swap_gain=1.5, mouth_follow=0.0)
    offset = set_swap_offset(model, identity_images, target_images).clone()
    with torch.no_grad():
        without = model(images)[0]
    with pytest.raises(ValueError, match="pose_follow and mouth_follow are 0"):
        set_pose_follow(model, swap_latents_of(model, identity_images), readable_measures(identity_images),
                        target_images, readable_measures(target_images))
    model.adapter = dataclasses.replace(model.adapter, pose_follow=0.0 if reading is None else 1.0,
                                        pose_reading=reading or "crop", mouth_follow=mouth)
    readable = torch.cat([target_images, identity_images])  # the tiny pair has 6 target faces; a reader needs 8
    target_measures = readable_measures(readable)
    directions = set_pose_follow(model, swap_latents_of(model, identity_images), readable_measures(identity_images),
                                 readable, target_measures, target_points=readable_points(readable))
    pose_rows = {"crop": [0, 1], "mask": [0], None: []}[reading]  # yaw and pitch off the crop, yaw off the mask
    columns = pose_rows + ([2] if mouth else [])  # then the mouth's opening
    assert directions.shape == (len(columns), TINY.latent_dim)
    assert (model.pose_reader is None if reading is None
            else isinstance(model.pose_reader, PointPoseReader if reading == "crop" else MaskYawReadout))
    assert (model.mouth_reader is None) == (not mouth)
    identity_step = pose_directions(swap_latents_of(model, identity_images), readable_measures(identity_images)[:, :2])
    if reading == "crop":  # the identity's own pose directions
        assert torch.allclose(directions[:2], identity_step)
    elif reading == "mask":  # the identity's yaw direction less the swap gain times the target's own
        target_step = pose_directions(swap_latents_of(model, readable), target_measures[:, :2])
        assert torch.allclose(directions[:1], (identity_step - 1.5 * target_step)[:1], atol=1e-6)
    if mouth:  # the identity's own direction of the opening, fitted beside its pose
        mouth_step = pose_directions(swap_latents_of(model, identity_images), readable_measures(identity_images))[2:]
        assert torch.allclose(directions[-1:], mouth_step)
    # a face at the target's mean pose and opening lands where the offset alone put it
    centre = torch.from_numpy(target_measures.mean(0)[columns]).float()
    assert torch.allclose(model.swap_latent_offset, offset - centre @ directions, atol=1e-5)
    with torch.no_grad():
        latents = model.latent(images)
        read = []
        if reading is not None:
            read.append(model.pose_reader(images) if reading == "crop" else model.pose_reader(
                model.target_decode(model.autoencoder.bottleneck.code_of(latents))[1]))
        if mouth:
            read.append(model.mouth_reader(images))
        read = torch.cat(read, 1)
        assert torch.equal(model.read_pose(images, latents), read)
        assert torch.allclose(swap_latents(latents, 1.5, model.swap_latent_offset, read, directions),
                              1.5 * latents + model.swap_latent_offset + read @ directions)
        swapped = model(images)
        assert (swapped[0] - without).abs().max() > 1e-4
    # saved with the adapter, read back into a fresh pair model as it was
    save_adapter(model, identity_weights, tmp_path / "adapter")
    saved = load_adapter(tmp_path / "adapter")
    assert torch.equal(saved.tensors[SWAP_POSE_DIRECTIONS], directions)
    assert any(name.startswith("pose_reader.") for name in saved.tensors) == (reading is not None)
    assert any(name.startswith("mouth_reader.") for name in saved.tensors) == bool(mouth)
    loaded = PairModel(base, saved.adapter_config)
    load_adapter_tensors(loaded, saved.tensors, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(images)[0], swapped[0])
        # merged and in the DFM module: the full morph is the swap
        dfm = merge_adapters(base, saved.tensors, saved.adapter_config).dfm_model()
        face, logits = dfm.decoder_part(dfm.encoder_part(images), torch.ones(1))
    assert torch.allclose(face, swapped[0], atol=1e-5) and torch.allclose(logits, swapped[1], atol=1e-4)


def test_mouth_step_faces_are_the_swaps_the_attached_mouth_step_paints_over_a_span(trained_pair):
    model, task = copy.deepcopy(trained_pair.model), trained_pair.task
    identity_images, target_images = task.identity_images[task.identity_train], task.target_images[task.target_train]
    model.adapter = dataclasses.replace(TINY_ADAPTER, swap_gain=1.5, mouth_follow=0.5)
    set_swap_offset(model, identity_images, target_images)
    images, span = target_tensors(), 0.04
    identity_latents, identity_measures = swap_latents_of(model, identity_images), readable_measures(identity_images)
    below, above = mouth_step_faces(model, identity_latents, identity_measures, images, span)
    with torch.no_grad():
        assert torch.equal(mouth_step_faces(model, identity_latents, identity_measures, images, 0.0)[0],
                           model(images)[0])  # no span: the swap as it is
    readable = torch.cat([target_images, identity_images])  # a reader needs 8 faces
    target_measures = readable_measures(readable)
    directions = set_pose_follow(model, identity_latents, identity_measures, readable, target_measures)
    centre = float(target_measures[:, 2].mean())
    with torch.no_grad():  # the attached swap, its mouth read at half the span either side of the target's mean
        latents = model.latent(images)
        for faces, read in ((below, centre - span / 2), (above, centre + span / 2)):
            swap = swap_latents(latents, 1.5, model.swap_latent_offset, torch.full((len(images), 1), read), directions)
            painted = model.paint_swap(swap)[0]
            assert torch.allclose(faces, painted, atol=1e-5)
    assert (above - below).abs().max() > 1e-3


def test_the_masks_readout_learns_the_turned_copies_too_and_nothing_else_moves(trained_pair):
    task, reading = trained_pair.task, "mask"
    identity_images, target_images = task.identity_images[task.identity_train], task.target_images[task.target_train]

    def poses_of(images):  # as above: yaw and pitch a reader can learn off the faces
        return readable_measures(images)[:, :2]
    readable = torch.cat([target_images, identity_images])
    turned = torch.roll(readable, shifts=3, dims=-1)  # stand-ins for turned copies, at poses of their own
    learnt = {}
    for copies in (None, (turned, poses_of(turned))):
        model = copy.deepcopy(trained_pair.model)
        model.adapter = dataclasses.replace(TINY_ADAPTER, swap_gain=1.5, pose_follow=1.0, pose_reading=reading,
                                            mouth_follow=0.0)
        set_swap_offset(model, identity_images, target_images)
        directions = set_pose_follow(model, swap_latents_of(model, identity_images), poses_of(identity_images), readable,
                                     poses_of(readable), turned=copies)
        with torch.no_grad():  # the copies and their mirror images, as the readout learns them
            both = torch.cat([turned, turned.flip(-1)])
            read = model.pose_reader(model.target_decode(model.autoencoder.bottleneck.code_of(model.latent(both)))[1])
        learnt[copies is not None] = directions, model.swap_latent_offset.clone(), read[:, 0].numpy()
    # the step and the offset stay the target's own faces'; only the readout learns from the copies
    assert torch.equal(learnt[True][0], learnt[False][0]) and torch.equal(learnt[True][1], learnt[False][1])
    assert not np.allclose(learnt[True][2], learnt[False][2])
    # a ridge readout fitted on them too reads them at least as closely (squared error)
    truth = poses_of(torch.cat([turned, turned.flip(-1)]))[:, 0]
    error = {k: np.square(v[2] - truth).sum() for k, v in learnt.items()}
    assert error[True] <= error[False] * (1 + 1e-4), error
    # the pose read off the crop learns the target's own faces and their points only
    model.adapter = dataclasses.replace(model.adapter, pose_reading="crop")
    with pytest.raises(ValueError, match="not turned copies"):
        set_pose_follow(model, swap_latents_of(model, identity_images), poses_of(identity_images), readable,
                        poses_of(readable), turned=(turned, poses_of(turned)), target_points=readable_points(readable))


def test_changing_settings_read_after_training_reuses_the_finished_training():
    from facepipe.assets.pair import LoraConfig

    def key(**values) -> str:
        return LoraConfig(**values).engine_config("cpu", inputs={"faces": "x"}, code="9").resume_key

    assert key() == key(swap_strength=0.5) == key(swap_gain=1.5) == key(pose_follow=1.0) == key(pose_reading="mask") != key(rank=4)
