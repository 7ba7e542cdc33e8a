"""Pair assets (identity × target): the LoRA adapter and the published swap model.

Per-identity and per-target inputs come through MultiToSingleDimensionPartitionMapping, so one
identity model serves every target. Inputs are read from the store, where a missing one is a
clear error naming what to materialize first.
"""

import json
from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Optional

import cv2
import numpy as np
import pandas as pd
import torch
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    asset,
    asset_check,
)

from facepipe.assets.failures import failure_policy
from facepipe.assets.stage import PREVIEW_FILE, code_version_of, run_stage, upstream
from facepipe.assets.training import TRAINING_OP_TAGS, TrainingConfig, train_in_store
from facepipe.embed import embedder_of_profile
from facepipe.evaluate import evaluate_swaps, face_alone, mean_identity_face_alone
from facepipe.export import export_dfm
from facepipe.faces import FaceSet, resize_crops
from facepipe.media import write_video
from facepipe.models.augment import AugmentConfig, turned_faces
from facepipe.models.autoencoder import model_config_of
from facepipe.models.pair import (AdapterConfig, adapter_counts, merged_swap_model, mouth_step_faces,
                                  pose_matched_weights, save_adapter, set_pose_follow, set_swap_offset, swap_latents_of)
from facepipe.models.pose import crop_readings, mirror_images, painted_change, turned_crops
from facepipe.models.swap import INPUT_BLUR_PX, swap_faces
from facepipe.models.turn import turned_points
from facepipe.partition_settings import partition_config
from facepipe.partitions import pair_partitions
from facepipe.preview import blend, colour_transfer, contact_sheet, evenly_spaced, paste_face, side_by_side, write_png
from facepipe.registry import publish
from facepipe.resources import FacepipeSettings
from facepipe.sharpening import export_sharpening, facefusion_fed, identity_softness
from facepipe.skin_tone import tone_gain
from facepipe.store import Artifact
from facepipe.train import Trained
from facepipe.train.balance import expression_measures
from facepipe.train.tasks.pair import PairTask

# 2: trains on the identity model's folder (weights + config); 3: ICNR in models.autoencoder; 4: curated faces;
# 5: colour jitter in training, swap latent offset; 6: eyes-and-mouth priority in both paths' losses, optional
# FaceFusion sharpening of the inputs (sharpen); 7: swap latent offset at the target's poses; 8: trained
# channels-last (faster CPU steps); 9: fused AdamW and one separable blur for the SSIM statistics (faster
# steps; rounding differs); 10: the swap latent map (pose_follow; zero by default) saved with the adapter;
# 11: pose_follow reads the target's pose with a CNN (models.pose) saved with the adapter instead of the map; 12: the pose
# reader reads degrees whatever the target's mean pitch (it read pitch about that mean); 13: the SSIM statistics in
# float32 under CUDA's fp16 autocast (NaN gradients there; CPU builds give the same bytes as 12). (A skin_tone
# setting here, which recoloured the identity's faces before the offset, was replaced the day it came by
# onnx_export's: its default wrote the same adapter, so no bump.) 14: a target that turns beyond even the
# identity's turned faces follows by default by its yaw read off the target path's mask (pose_reading "mask").
# 15: pose_follow's mask readout also learns from the target's turned copies (pose.turned_crops).
# 16: the swap's mouth follows the target's, read off the crop by a second CNN (mouth_follow, on by default).
# 17: mouth_follow off where its step turns the swap (turn_checked_mouth_follow).
# 18: pose_follow off the crop reads the pose through the six points FaceMesh solves it from (PointPoseReader).
LORA_VERSION = "18"
# 2: one crop resizer; 3: ICNR in models.autoencoder; 4: preview shows the swap blended on the target;
# 5: curated faces (the target's held-out faces and preview frames are curated ones); 6: previews paste through
# the target's XSeg mask with colour transfer, the video beside the original frame; 7: morph_value:0 input
# (target path at 0, swap at 1), crops aligned as the runtimes align them; 8: the celeb face is filled outside
# its mask with its own colours (models.swap.fill_outside_mask); swaps and baseline measured alone (evaluate.face_alone);
# 9: the face sharpened by an unsharp mask matched to the identity model's softness (facepipe.sharpening);
# 10: that mask capped at 0.5 (was 1.0); 11: and at what makes the swaps as sharp as the target's faces;
# 12: the input crop low-passed to the sharpness the encoder learnt from (models.swap.INPUT_BLUR_PX);
# 13: the swap latent map (pose_follow) folded into the swap and the morph; 14: pose_follow's pose reader
# in the graph beside the encoder, the map gone; 15: the reader reads degrees (a centre beside its scale);
# 16: the unsharp mask matched to the target's faces as FaceFusion feeds them (up to 1), not to the identity model;
# 17: ... to the target's faces as the runtimes cut them (bilinear, not anti-aliased), up to 2;
# 18: the face in the target's skin tone (skin_tone, a per-channel gain; facepipe.skin_tone);
# 19: the card's metrics hold the span of following (evaluate.span_ratio); the .dfm is the same;
# 20: pose_follow off the target path's mask (a second decoder pass in the graph, when the adapter reads so)
# 21: mouth_follow's CNN in the graph beside the encoder; 22: pose_follow's reader off the crop reads six points
# and solves the pose from them (models.pose.PointPoseReader)
EXPORT_VERSION = "22"


def pair_keys(context) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["identity"], keys["target"]


# A target that turns this much further than the identity's faces (5th-95th percentile of yaw) gets
# a warning: the swap turns about as far as the identity's faces (docs/swap_quality.md).
TURN_HINT_DEG = 5.0


class LoraConfig(TrainingConfig):
    """Defaults train the sample pair on a CPU in minutes."""

    rank: int = 8
    alpha: float = 16.0
    identity_replay_weight: float = 1.0
    eyes_mouth_weight: float = 1.0  # extra L1 over the eyes and mouth in both paths (see the identity model's)
    # 3e-3 and more epochs than the 40 at 1e-3 it once had: the adapter carries the target's expression into
    # the identity's code, and it was undertrained. Measured on german_news -> obama (demo identity
    # model, 60 held-out frames, FaceFusion feeding): mouth following 0.28 at 40 epochs, 0.58 at 120
    # and 0.68 at 240 (lr 1e-3), 0.67 at 120 with lr 3e-3 — the same reach in half the time. At 3e-3
    # it has learnt what it will by 90: 90, 120 and 240 epochs on the same demo identity models
    # followed within a build's noise of each other (docs/swap_quality.md, "The adapter's length"),
    # and 90 takes a quarter off the demo's pair job.
    epochs: int = 90
    batch_size: int = 16
    lr: float = 3e-3
    samples_per_epoch: int = 128
    # obama_late's 158 training faces, on which the quality preset's hour was measured (its adapter's
    # share); a larger target trains on a slice of its faces each epoch (facepipe.train.epochs).
    max_samples_per_epoch: int = 160
    # Share of training inputs sharpened as FaceFusion feeds them (0: off, for DeepFaceLive only).
    sharpen: float = AugmentConfig.sharpen
    # Share of the identity replay's faces turned in 3D (facepipe.models.turn), up to turn_deg either way.
    turn: float = 0.0
    turn_deg: float = AugmentConfig.turn_deg
    # Share of training inputs cut as the runtimes cut them (see the identity model's; off: at the quality
    # preset the adapter trained so, without the export's low-pass, took FaceFusion-fed yaw r 0.46 -> 0.14).
    runtime_crop: float = AugmentConfig.runtime_crop
    # Share of the trained encoder delta the swap reads the target with (facepipe.models.pair,
    # AdapterConfig.swap_strength: measured there). Only the swap latent offset and the merge read it.
    swap_strength: float = AdapterConfig.swap_strength
    # The spread of the swap's latents about their mean (facepipe.models.pair, AdapterConfig.swap_gain:
    # measured there); read only after training, like swap_strength.
    swap_gain: float = AdapterConfig.swap_gain
    # How far the swap's pose follows the target's along the identity's own pose directions
    # (facepipe.models.pair, AdapterConfig.pose_follow: measured there); read only after training.
    # None (the default) chooses by the pair's poses (``chosen_pose_follow``): 1 where the adapter turns
    # the identity's faces (turn), else 0.
    pose_follow: Optional[float] = None
    # What pose_follow reads the target's pose with: "crop" or "mask" (facepipe.models.pair,
    # AdapterConfig.pose_reading: measured there); None (the default) chooses by the pair's poses
    # (``chosen_pose_follow``): "mask" where the target turns beyond even the identity's turned faces.
    pose_reading: Optional[str] = None
    # How far the swap's mouth follows the target's opening, read off the crop by a CNN, along the
    # identity's own direction of it (facepipe.models.pair, AdapterConfig.mouth_follow: measured there);
    # read only after training.
    mouth_follow: float = AdapterConfig.mouth_follow
    after_training: ClassVar[tuple[str, ...]] = ("swap_strength", "swap_gain", "pose_follow", "pose_reading", "mouth_follow")


@asset(key=AssetKey(["pair", "lora_adapter"]), partitions_def=pair_partitions, group_name="pair",
       code_version=LORA_VERSION, op_tags=TRAINING_OP_TAGS,
       ins={"identity_model": upstream("identity/identity_model", "identity"),
            "identity_faces": upstream("identity/curated_faces", "identity"),
            "target_faces": upstream("target/curated_faces", "target"),
            "target_masks": upstream("target/target_masks", "target")},
       description="peft LoRA on the frozen identity model: a shared set on encoder + bottleneck, a target-path set "
                   "on a decoder copy; target faces (masked by XSeg) mixed with identity replay.")
@failure_policy
def lora_adapter(context: AssetExecutionContext, config: LoraConfig, settings: FacepipeSettings, identity_model: Artifact,
                 identity_faces: Artifact, target_faces: Artifact, target_masks: Artifact) -> MaterializeResult:
    config = partition_config(context, settings, config)
    identity, target = pair_keys(context)
    context.log.info(f"reusing identity_model {identity_model.fingerprint} of '{identity}' (built once, shared by every target)")
    adapter = AdapterConfig(rank=config.rank, alpha=config.alpha, identity_replay_weight=config.identity_replay_weight,
                            eyes_mouth_weight=config.eyes_mouth_weight, swap_strength=config.swap_strength,
                            swap_gain=config.swap_gain, pose_reading=config.pose_reading or AdapterConfig.pose_reading,
                            mouth_follow=config.mouth_follow)

    def make_task() -> PairTask:
        ident, targ = FaceSet.load(identity_faces.path), FaceSet.load(target_faces.path)
        return PairTask.from_faces(identity_model.path, ident.crops, ident.masks, targ.crops,
                                   np.load(target_masks.path / "masks.npy"), config.holdout_every,
                                   config.samples_per_epoch, adapter,
                                   AugmentConfig(sharpen=config.sharpen, turn=config.turn, turn_deg=config.turn_deg,
                                                 runtime_crop=config.runtime_crop),
                                   identity_landmarks=ident.landmarks, target_landmarks=targ.landmarks,
                                   max_samples_per_epoch=config.max_samples_per_epoch)

    def write(trained: Trained, out: Path) -> dict:
        model = trained.model
        context.log.info(f"pair adapter: rank {adapter.rank}, alpha {adapter.alpha}: {model.adapter_parameters} adapter "
                         f"parameters, {100 * model.adapter_share:.2f}% of the identity model's {model.base_parameters}")
        task = trained.task
        mirrored = identity_model.record["config"].get("flip", 0) > 0
        targ = FaceSet.load(target_faces.path)
        identity_images, identity_measures, target_measures = pose_matched_identity(
            task, FaceSet.load(identity_faces.path), targ, mirrored)
        identity_poses, target_poses = identity_measures[:, :2], target_measures[:, :2]
        target_images = task.target_images[task.target_train]
        offset = set_swap_offset(model, identity_images, target_images, pose_matched_weights(identity_poses, target_poses))
        context.log.info(f"swap latent offset (identity mean at the target's poses - target mean): norm {offset.norm():.3f}"
                         f"{' (identity faces mirrored too)' if mirrored else ''}")
        identity_yaw, target_yaw = yaw_span(identity_poses), yaw_span(target_poses)
        warning = beyond_reach_warning(identity, target, identity_yaw, target_yaw)
        if warning and not identity_model.record["config"].get("turn"):
            context.log.warning(warning)
        follow, reading, why = chosen_pose_follow(config.pose_follow, config.pose_reading, config.turn > 0, warning is None)
        mouth, mouth_why = chosen_mouth_follow(config.mouth_follow, identity_measures[:, 2], target_measures[:, 2])
        model.adapter = replace(model.adapter, pose_follow=follow, pose_reading=reading, mouth_follow=mouth)
        mouth_turn = None
        identity_latents = swap_latents_of(model, identity_images) if follow > 0 or mouth > 0 else None
        if mouth > 0:
            painted = painted_mouth_step(model, identity_latents, identity_measures, target_images, target_measures[:, 2],
                                         targ.crops.shape[1])
            mouth, mouth_turn, mouth_why = turn_checked_mouth_follow(mouth, painted, target_poses, mouth_why)
            model.adapter = replace(model.adapter, mouth_follow=mouth)
        context.log.info(f"pose_follow {follow:g}" + (f" off the {reading}" if follow > 0 else "") + f" ({why}); "
                         f"mouth_follow {mouth:g} ({mouth_why})")
        if follow > 0 or mouth > 0:
            # The readers learn the pose and the mouth FaceMesh reads on each crop itself, as the evaluation reads faces.
            train_rows = task.target_train.numpy()
            read_measures, read_points = crop_readings(targ.crops[train_rows])
            # The mask's readout learns the target's turned copies too (measured on obama_early → vox); the
            # crop's reader, whose pairs (german_news → obama) turn within its faces, the target's own faces
            # (copies measured there: docs/swap_quality.md, "The swap's mouth, read off the crop").
            turned = turned_crops(targ.crops[train_rows], np.load(target_masks.path / "masks.npy")[train_rows],
                                  target_images.shape[-1]) if follow > 0 and reading == "mask" else None
            directions = set_pose_follow(model, identity_latents, identity_measures, target_images, read_measures,
                                         config.seed, turned=turned, target_points=read_points)
            context.log.info(f"learnt what the swap follows on {int(np.isfinite(read_measures).all(axis=1).sum())} "
                             f"of the target's training faces; the swap moves {directions.norm(dim=1).round(decimals=3).tolist()} "
                             "per unit read (degree of yaw, pitch; mouth opening)")
        save_adapter(trained.model, identity_model.path / "model.safetensors", out)
        np.save(out / "target_holdout.npy", trained.task.target_held.numpy().astype(np.int64))
        return {**{k: round(float(v), 6) for k, v in adapter_counts(trained.model).items()},
                "swap_latent_offset_norm": round(float(offset.norm()), 4),
                "swap_pose_directions_norm": round(float(model.swap_pose_directions.norm()), 4)
                if model.swap_pose_directions is not None else None,
                "identity_yaw_deg": list(identity_yaw), "target_yaw_deg": list(target_yaw), "pose_follow": follow,
                "pose_reading": reading if follow > 0 else None, "mouth_follow": mouth,
                "mouth_step_turn_share": None if mouth_turn is None or np.isnan(mouth_turn) else round(mouth_turn, 3)}

    return train_in_store(context, settings, config, make_task, write)


# Columns of expression_measures in the order the pose readers use: yaw, pitch, the mouth's opening.
POSE_AND_MOUTH = [3, 4, 0]


def pose_matched_identity(task: PairTask, identity: FaceSet, target: FaceSet,
                          mirrored: bool) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The identity's training faces (and their mirror images, when the identity model learnt
    mirrored faces; their turned copies, when the adapter turns its replay), their measures and
    those of the target's training faces ([N, 3] yaw and pitch in degrees, the mouth's opening), for
    the swap latent offset (facepipe.models.pair.pose_matched_weights) and the directions the swap
    follows along (set_pose_follow)."""
    identity_rows, target_rows = task.identity_train.numpy(), task.target_train.numpy()
    images = task.identity_images[task.identity_train]
    poses = expression_measures(identity.landmarks[identity_rows], identity.crops.shape[1])[:, POSE_AND_MOUTH]
    target_poses = expression_measures(target.landmarks[target_rows], target.crops.shape[1])[:, POSE_AND_MOUTH]
    if task.identity_points is not None:
        # The replay's turned faces too, at the two widest turns, so a target that turns further
        # than the identity's media finds identity faces at its own pose.
        # Their grids are the turn table's first and last columns, solved at exactly those angles.
        usable = np.isfinite(task.identity_turns[identity_rows]).all(axis=(1, 2, 3, 4))  # faces the table turns
        points, table = task.identity_points[identity_rows][usable], task.identity_turns[identity_rows][usable]
        keep = torch.from_numpy(usable)
        base, base_masks = images[keep], task.identity_masks[task.identity_train][keep]
        for column, degrees in ((0, -task.augment.turn_deg), (-1, task.augment.turn_deg)):
            marks = np.stack([turned_points(face_points, np.radians(degrees)) for face_points in points])
            images = torch.cat([images, turned_faces(base, base_masks, table[:, column])[0]])
            poses = np.concatenate([poses, expression_measures(marks, images.shape[-1])[:, POSE_AND_MOUTH]])
    if mirrored:
        images, poses = mirror_images(images, poses)
    return images, poses, target_poses


def yaw_span(poses: np.ndarray) -> tuple[float, float]:
    """5th and 95th percentile of the yaws (degrees) of poses [N, 2], to 0.1 degree."""
    low, high = np.percentile(poses[:, 0], [5, 95])
    return round(float(low), 1), round(float(high), 1)


def beyond_reach_warning(identity: str, target: str, identity_yaw: tuple[float, float],
                         target_yaw: tuple[float, float]) -> str | None:
    """The line telling the user that the target turns further than the identity's faces (yaw spans
    in degrees, ``yaw_span``), or None when it stays within TURN_HINT_DEG of them."""
    if target_yaw[0] >= identity_yaw[0] - TURN_HINT_DEG and target_yaw[1] <= identity_yaw[1] + TURN_HINT_DEG:
        return None
    return (f"'{target}' turns {target_yaw[0]:.0f}..{target_yaw[1]:.0f} deg, the identity's faces (mirrored where the "
            f"identity model mirrors them) {identity_yaw[0]:.0f}..{identity_yaw[1]:.0f} deg: the swap turns about as far "
            f"as the identity's faces. More footage of '{identity}' turning, or head turns, let it follow further: "
            f"[identity_model] turn = 0.5 in data/identities/{identity}/settings.toml and lora_adapter = {{ turn = 0.5 }} "
            f"in this pair's entry of data/pairs.toml (README, 'Settings of one partition')")


def chosen_pose_follow(setting: float | None, reading: str | None, turned: bool,
                       within_reach: bool) -> tuple[float, str, str]:
    """The pose_follow a pair's swap uses, what it reads the pose with ("crop" or "mask") and why:
    the pair's settings where it has them; by default 1 where the adapter turns the identity's faces
    (``turn``: its own faces fall short of the target's turns), off the crop where the target turns
    within those turned faces' reach (``beyond_reach_warning`` has nothing to say), off the target
    path's mask where it turns further still; else 0. Measured (docs/swap_quality.md, "`pose_follow`
    by default" and "The swap at the target's pose, given it"): german_news -> obama, turned and
    within, yaw r 0.61 -> 0.81 at the demo length; obama_early -> vox, turned and beyond, off the crop
    0.71 -> 0.43 at the quality length (the far cheek squeezed: the CNN reads vox's later frames 15 deg
    too far), off the mask 0.64 -> 0.83 at the demo length (pitch 0.83 -> 0.84; vox's shut mouth 0.61
    -> 0.33); kim -> mead, whose own faces cover mead's turns, 0.83 -> 0.78 at the demo length (pitch
    0.84 -> 0.88), within a build's noise: nothing to gain there."""
    chosen = reading or ("crop" if within_reach else "mask")
    if setting is not None:
        return float(setting), chosen, "the pair's setting"
    if not turned:
        return 0.0, chosen, "by default: the adapter does not turn the identity's faces, lora_adapter.turn is 0"
    if within_reach:
        return 1.0, chosen, "by default: the target turns within the identity's turned faces"
    # Where the pair sets the reading, the reason says nothing of the one it would have chosen.
    return 1.0, chosen, ("by default: the target turns beyond even the identity's turned faces"
                         + ("" if reading else ", so its yaw is read off the target path's mask"))


# The least spread of the mouth's opening (5th to 95th percentile of evaluate.mouth_opening over a side's
# faces) on both sides for the swap's mouth to follow the target's. The step along the identity's own
# direction of the opening is fitted on its faces, and faces that hardly open the mouth give a step of noise
# (the sample's photo of Hopper, animated, spans 0.0002..0.003; german_news's talking head 0.001..0.04); a
# target that keeps its mouth shut gives the reader nothing but noise to learn, which the swap's mouth would
# then follow (docs/swap_quality.md, "The swap's mouth, read off the crop").
MOUTH_SPAN_MIN = 0.01


def chosen_mouth_follow(setting: float, identity_openings: np.ndarray, target_openings: np.ndarray) -> tuple[float, str]:
    """The mouth_follow a pair's swap uses and why: the setting, or 0 where the identity's faces or
    the target's (``identity_openings``, ``target_openings``: the mouth's opening of each face)
    hardly open the mouth (MOUTH_SPAN_MIN)."""
    spans = {side: np.percentile(openings, [5, 95]) for side, openings in
             (("identity's", identity_openings), ("target's", target_openings))}
    said = ", ".join(f"the {side} faces {low:.4f}..{high:.4f}" for side, (low, high) in spans.items())
    shut = [side for side, (low, high) in spans.items() if high - low < MOUTH_SPAN_MIN]
    if setting > 0 and shut:
        return 0.0, (f"the {' and the '.join(shut)} faces hardly open the mouth ({said}, 5th to 95th percentile of "
                     f"the opening; under {MOUTH_SPAN_MIN:g} apart there is nothing to follow)")
    return float(setting), f"the mouth opens: {said} (5th to 95th percentile)"


# The most the swap may turn as mouth_follow's step moves it over the target's range of the opening, as a
# share of the target's own range of turns (5th to 95th percentile of each, yaw and pitch apart). The step
# is the identity's direction of the opening fitted beside its yaw and pitch on its faces, and where the
# identity turns as it talks that fit can leave turn in it. Measured at the demo length (docs/swap_quality.md,
# "A mouth step that turns the swap"): kim -> mead's step turned the swap 13 deg of yaw, 2.2 of mead's
# range, and its swaps turned three times as wide as mead (pasted back, yaw r 0.79 -> 0.73, pitch 0.85 ->
# 0.73) for a mouth that followed no better (0.88 either way); german_news -> obama's 0.8 deg of yaw and
# -2.4 of pitch (FaceMesh reads a dropping jaw as a little pitch), 0.21 of obama's range, and its mouth
# followed at 0.87 against 0.60.
MOUTH_TURN_MAX_SHARE = 0.5
MOUTH_CHECK_FACES = 64  # of the target's training faces, evenly spaced: enough for a mean change


def painted_mouth_step(model, identity_latents: torch.Tensor, identity_measures: np.ndarray, target_images: torch.Tensor,
                       target_openings: np.ndarray, size: int) -> np.ndarray:
    """What mouth_follow's step paints over the target's range of the opening (``target_openings``, 5th
    to 95th percentile) on up to MOUTH_CHECK_FACES of its training faces, as FaceMesh reads the swaps at
    ``size`` (``pose.painted_change``): [3] the change of the swap's yaw and pitch (degrees) and opening."""
    low, high = np.percentile(target_openings, [5, 95])
    rows = torch.from_numpy(evenly_spaced(len(target_images), MOUTH_CHECK_FACES))
    below, above = mouth_step_faces(model, identity_latents, identity_measures, target_images[rows], float(high - low))
    return painted_change(below, above, size)


def turn_checked_mouth_follow(mouth: float, painted: np.ndarray, target_poses: np.ndarray,
                              why: str) -> tuple[float, float, str]:
    """mouth_follow as ``chosen_mouth_follow`` chose it (and ``why``), or 0 where its step turns the
    swap (``painted``, ``painted_mouth_step``) more than MOUTH_TURN_MAX_SHARE of the target's range of
    yaw or of pitch (``target_poses`` [N, 2], degrees); also the larger of those two shares (NaN where
    FaceMesh read no swap: then nothing speaks against the step)."""
    if not np.isfinite(painted).all():
        return mouth, float("nan"), f"{why}; FaceMesh read none of the swaps its step paints, so what it turns is not known"
    spans = np.ptp(np.percentile(target_poses, [5, 95], axis=0), axis=0)
    share = float(np.max(np.abs(painted[:2]) / np.maximum(spans, 1e-6)))
    said = (f"over the target's range of the opening its step turns the swap {painted[0]:+.1f} deg of yaw, "
            f"{painted[1]:+.1f} of pitch ({share:.2f} of the target's range of turns) and opens its mouth "
            f"{painted[2]:+.4f}, as FaceMesh reads the swaps")
    if share > MOUTH_TURN_MAX_SHARE:
        return 0.0, share, f"{said}: over {MOUTH_TURN_MAX_SHARE:g}, the swap would turn as the mouth moves"
    return mouth, share, f"{why}; {said}"


def composited(swaps: np.ndarray, target_crops: np.ndarray, swap_masks: np.ndarray, target_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a person judges a swap by, at the swap's size: each swap recoloured to its target face's
    light (``colour_transfer``) and the paste mask, the swap's own mask times the target's XSeg mask
    (what covers the target face stays in front). Returns (recoloured swaps, paste masks)."""
    masks = (swap_masks.astype(np.uint16) * target_masks // 255).astype(np.uint8)
    faces = np.stack([colour_transfer(face, crop, mask) for face, crop, mask in zip(swaps, target_crops, masks)])
    return faces, masks


def preview_video(target_faces: FaceSet, frames_path: Path, manifest, swapped, face_masks, out: Path, limit: int = 100) -> int:
    """The original frame beside the swap pasted back into it (first video of the target, up to
    `limit` frames)."""

    video_rows = [i for i in range(len(target_faces)) if target_faces.index.kind.iat[i] == "video"]
    first = target_faces.index.source.iat[video_rows[0]] if video_rows else None
    rows = [i for i in video_rows if target_faces.index.source.iat[i] == first][:limit]
    if not rows:
        return 0
    files = dict(zip(manifest.frame_id, manifest.file))
    frames = []
    for i in rows:
        frame = cv2.imread(str(frames_path / files[int(target_faces.index.frame_id.iat[i])]))
        matrix = target_faces.index[[f"m{k}" for k in range(6)]].iloc[i].to_numpy()
        frames.append(side_by_side(frame, paste_face(frame, swapped[i], face_masks[i], matrix, target_faces.crops.shape[1])))
    write_video(out, frames, 25)
    return len(frames)


class ExportConfig(Config):
    # The unsharp mask on the exported face (models.swap.unsharp): None matches it to the target
    # (facepipe.sharpening: the swaps of its training faces, fed as FaceFusion feeds them, as sharp as
    # those faces cut as the runtimes cut them, up to 2); a number sets the amount (0: off). Measured in
    # docs/swap_quality.md.
    sharpen: Optional[float] = None
    # σ (px at the model's size) of the Gaussian on the crop the model is fed, before the encoder
    # reads it (0: off): the runtimes' crops are far sharper than the training inputs
    # (models.swap.INPUT_BLUR_PX). Measured in docs/swap_quality.md.
    input_blur: float = INPUT_BLUR_PX
    # How far the exported face is taken to the target's skin tone and light (facepipe.skin_tone: a
    # per-channel gain on the painted face, fitted on the swaps of the target's training faces): 0 the
    # identity's own, 1 the target's. DeepFaceLive pastes the face as it comes by default; FaceFusion
    # matches colours itself. Measured in docs/swap_quality.md, "The target's skin tone".
    skin_tone: float = 1.0


@asset(key=AssetKey(["pair", "onnx_export"]), partitions_def=pair_partitions, group_name="pair", code_version=EXPORT_VERSION,
       ins={"lora_adapter": upstream("pair/lora_adapter"),
            "identity_model": upstream("identity/identity_model", "identity"),
            "identity_profile": upstream("identity/identity_profile", "identity"),
            "identity_faces": upstream("identity/curated_faces", "identity"),
            "target_faces": upstream("target/curated_faces", "target"),
            "xseg_model": upstream("target/xseg_model", "target"),
            "target_masks": upstream("target/target_masks", "target"),
            "frames": upstream("target/frames", "target")},
       description="Merged swap model (adapted encoder → base decoder) as a verified DFM ONNX with .hash and card, "
                   "the target's XSeg beside it, evaluation vs a paste-the-identity baseline, previews; published "
                   "to models/trained/ and its index.json.")
@failure_policy
def onnx_export(context: AssetExecutionContext, config: ExportConfig, settings: FacepipeSettings, lora_adapter: Artifact,
                identity_model: Artifact, identity_profile: Artifact, identity_faces: Artifact, target_faces: Artifact,
                xseg_model: Artifact, target_masks: Artifact, frames: Artifact) -> MaterializeResult:
    config = partition_config(context, settings, config)
    identity, target = pair_keys(context)
    name = f"{identity}_{target}"

    def write(out: Path) -> dict:
        merged = merged_swap_model(identity_model.path / "model.safetensors", lora_adapter.path)
        size = model_config_of(identity_model.path).size
        targ = FaceSet.load(target_faces.path)
        held = np.load(lora_adapter.path / "target_holdout.npy")
        held = held if len(held) else np.arange(min(8, len(targ)))
        identity_set = FaceSet.load(identity_faces.path)
        softness = identity_softness(identity_model.path, identity_set.crops, identity_model.record["config"]["holdout_every"])
        train = np.setdiff1d(np.arange(len(targ)), held)  # the target's held-out faces judge the export
        train = train if len(train) else np.arange(len(targ))
        fed = facefusion_fed(targ.crops[train], size)

        def training_swaps(gain: tuple[float, float, float] | None) -> np.ndarray:
            return swap_faces(merged.dfm_model(input_blur=config.input_blur, colour_gain=gain), fed, size).faces

        gain = tone_gain(training_swaps(None), targ.crops[train], config.skin_tone) if config.skin_tone else None
        if config.sharpen is None:
            sharpen = export_sharpening(training_swaps(gain), targ.crops[train])
        else:
            sharpen = config.sharpen
        context.log.info(f"the identity model reconstructs held-out faces with {softness:.2f} of their sharpness; the "
                         f"exported face gets an unsharp mask of {sharpen:.2f}"
                         f"{' (set in run config)' if config.sharpen is not None else ', the amount that makes the swaps of the target training faces as sharp as those faces cut as the runtimes cut them (at most 2)'}"
                         f"; the crop it is fed is low-passed by a Gaussian of {config.input_blur:g} px; "
                         + (f"its colours are multiplied by {', '.join(f'{g:.3f}' for g in gain)} (B, G, R) to take it to "
                            f"{config.skin_tone:g} of the way to the target's skin tone" if gain else
                            "it keeps the identity's skin tone (skin_tone 0)"))
        dfm = merged.dfm_model(sharpen=sharpen, input_blur=config.input_blur, colour_gain=gain)

        parity_crops = list(resize_crops(targ.crops[held[:8]], size))
        profile = json.loads((identity_profile.path / "profile.json").read_text())
        swapped = swap_faces(dfm, np.asarray(targ.crops), size)
        evaluation = evaluate_swaps(np.asarray(targ.crops[held]), face_alone(swapped.faces[held], swapped.celeb_masks[held]),
                                    profile, embedder_of_profile(profile, identity_profile.record["config"]).prepare(),
                                    mean_identity_face_alone(identity_set.crops, identity_set.masks))
        metrics = evaluation.summary()
        lineage = {"identity_model": identity_model.content_hash, "lora_adapter": lora_adapter.content_hash,
                   "identity_profile": identity_profile.content_hash, "target_faces": target_faces.content_hash,
                   "code_version": code_version_of(context), "adapter_config": lora_adapter.record.get("config"),
                   "sharpen": sharpen, "input_blur": config.input_blur, "colour_gain": gain}
        exported = export_dfm(dfm, size, out / f"{name}.dfm", parity_crops, card={
            "name": name, "identity": identity, "target": target, "lineage": lineage, "metrics": metrics,
            "runtime": "facepipe install facefusion|deepfacelive PATH puts the .dfm (alone) where each runtime reads it"})
        for suffix in ("onnx", "hash", "json"):  # the target's occluder model, published beside the swap model
            (out / f"{target}_xseg.{suffix}").write_bytes((xseg_model.path / f"xseg.{suffix}").read_bytes())
        crops = resize_crops(np.asarray(targ.crops), size)
        faces, paste_masks = composited(swapped.faces, crops, swapped.celeb_masks,
                                        resize_crops(np.load(target_masks.path / "masks.npy"), size))
        picks = held[evenly_spaced(len(held), 8)]
        # target | the swap recoloured and pasted on it, as a person sees it | the paste mask
        tiles = [tile for i in picks for tile in (crops[i], blend(faces[i], paste_masks[i], crops[i]), paste_masks[i])]
        write_png(out / PREVIEW_FILE, contact_sheet(tiles, columns=6, thumb=size))
        manifest = pd.read_parquet(frames.path / "manifest.parquet")
        pasted = preview_video(targ, frames.path / "frames", manifest, faces, paste_masks, out / "preview.mp4")
        return {"metrics": metrics, "onnx_parity_max_abs_error": float(f"{exported.max_abs_error:.3g}"),
                "parity_tolerance": exported_tolerance(exported), "model_size": size,
                "sharpen": round(sharpen, 4), "input_blur": config.input_blur,
                "colour_gain": None if gain is None else [round(g, 4) for g in gain],
                "identity_reconstruction_sharpness": round(softness, 4),
                "preview_video": "preview.mp4" if pasted else None, "preview_video_frames": pasted,
                "identity_transfer_gain": metrics["identity"]["identity_transfer_gain"],
                "pose_following_margin_deg": metrics["pose_following_margin_deg"]}

    def publish_models(artifact: Artifact) -> None:
        files = [artifact.path / f"{name}.{s}" for s in ("dfm", "hash", "json")]
        xseg_files = [artifact.path / f"{target}_xseg.{s}" for s in ("onnx", "hash", "json")]
        published = publish(settings.models_path, name, files, {"kind": "swap", "format": "dfm", "identity": identity,
                                                                "target": target, "content_hash": artifact.content_hash})
        publish(settings.models_path, f"{target}_xseg", xseg_files, {"kind": "occluder", "format": "onnx", "target": target})
        context.log.info(f"published {name}: written {published['written'] or 'nothing (same bytes)'}")

    return run_stage(context, settings, config.model_dump(), write, publish_models)


def exported_tolerance(exported) -> float:
    return json.loads(exported.card_path.read_text())["parity"]["tolerance"]


def export_metadata(context: AssetCheckExecutionContext, settings: FacepipeSettings) -> dict:
    return settings.store.current_record("pair/onnx_export", context.partition_key)["metadata"]


@asset_check(asset=onnx_export, partitions_def=pair_partitions, description="onnxruntime output matches torch within tolerance.")
def swap_onnx_parity(context: AssetCheckExecutionContext, settings: FacepipeSettings) -> AssetCheckResult:
    meta = export_metadata(context, settings)
    return AssetCheckResult(passed=meta["onnx_parity_max_abs_error"] <= meta["parity_tolerance"],
                            metadata={"max_abs_error": meta["onnx_parity_max_abs_error"], "tolerance": meta["parity_tolerance"]})


@asset_check(asset=onnx_export, partitions_def=pair_partitions,
             description="Identity transfer: held-out swaps sit closer to the identity profile than the target faces do.")
def swap_identity_transfer(context: AssetCheckExecutionContext, settings: FacepipeSettings) -> AssetCheckResult:
    identity = export_metadata(context, settings)["metrics"]["identity"]
    gain = identity["identity_transfer_gain"]
    return AssetCheckResult(passed=gain is not None and gain > 0, metadata={k: v for k, v in identity.items() if v is not None})


@asset_check(asset=onnx_export, partitions_def=pair_partitions,
             description="Attribute following: the swap follows the target's pose better than pasting the mean identity face.")
def swap_follows_pose(context: AssetCheckExecutionContext, settings: FacepipeSettings) -> AssetCheckResult:
    metrics = export_metadata(context, settings)["metrics"]
    margin = metrics["pose_following_margin_deg"]
    return AssetCheckResult(passed=margin is not None and margin > 0, metadata={
        "pose_following_margin_deg": margin, "swap_pose_mae_deg": metrics["swap_following"].get("pose_mae_deg"),
        "baseline_pose_mae_deg": metrics["baseline_following"].get("pose_mae_deg"),
        "mouth_following_margin": metrics.get("mouth_following_margin")})


PAIR_ASSETS = [lora_adapter, onnx_export]
PAIR_CHECKS = [swap_onnx_parity, swap_identity_transfer, swap_follows_pose]
