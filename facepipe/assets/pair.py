"""Pair assets (identity × target): the LoRA adapter and the published swap model.

Per-identity and per-target inputs come through MultiToSingleDimensionPartitionMapping, so one
identity model serves every target. Inputs are read from the store, where a missing one is a
clear error naming what to materialize first.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MultiToSingleDimensionPartitionMapping,
    asset,
    asset_check,
)

from facepipe.assets.failures import failure_policy
from facepipe.assets.stage import PREVIEW_FILE, run_stage
from facepipe.assets.training import TRAINING_POOL, TrainingConfig, mirrored_checkpoints
from facepipe.embed import get_embedder
from facepipe.evaluate import evaluate_swaps, mean_identity_face
from facepipe.export import export_dfm
from facepipe.faces import FaceSet
from facepipe.lora import (
    AdapterConfig,
    merged_swap_model,
    pair_fingerprint_inputs,
    save_adapter,
    swap_faces,
    train_pair_adapter,
)
from facepipe.models.autoencoder import AutoencoderConfig
from facepipe.partitions import pair_partitions
from facepipe.preview import contact_sheet, evenly_spaced, paste_face, write_png
from facepipe.registry import publish
from facepipe.resources import FacepipeSettings
from facepipe.sample import write_video
from facepipe.store import Artifact

LORA_VERSION = "1"
EXPORT_VERSION = "1"
by_identity = MultiToSingleDimensionPartitionMapping(partition_dimension_name="identity")
by_target = MultiToSingleDimensionPartitionMapping(partition_dimension_name="target")


def pair_keys(context) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["identity"], keys["target"]


def identity_model_config(artifact: Artifact) -> AutoencoderConfig:
    config = artifact.record["config"]
    return AutoencoderConfig(size=config["resolution"], width=config["width"], latent_dim=config["latent_dim"],
                             depth=config["depth"])


class LoraConfig(TrainingConfig):
    """Defaults train the sample pair on a CPU in minutes."""

    rank: int = 8
    alpha: float = 16.0
    identity_replay_weight: float = 1.0
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    samples_per_epoch: int = 128


@asset(key=AssetKey(["pair", "lora_adapter"]), partitions_def=pair_partitions, group_name="pair", code_version=LORA_VERSION,
       pool=TRAINING_POOL,
       deps=[AssetDep(AssetKey(["identity", "identity_model"]), partition_mapping=by_identity),
             AssetDep(AssetKey(["identity", "faces"]), partition_mapping=by_identity),
             AssetDep(AssetKey(["target", "faces"]), partition_mapping=by_target),
             AssetDep(AssetKey(["target", "target_masks"]), partition_mapping=by_target)],
       description="peft LoRA on the frozen identity model: a shared set on encoder + bottleneck, a target-path set "
                   "on a decoder copy; target faces (masked by XSeg) mixed with identity replay.")
@failure_policy
def lora_adapter(context: AssetExecutionContext, config: LoraConfig, settings: FacepipeSettings) -> MaterializeResult:
    store = settings.store
    identity, target = pair_keys(context)
    pair = f"{identity}|{target}"
    model_artifact = store.current("identity/identity_model", identity)
    identity_faces = store.current("identity/faces", identity)
    target_faces = store.current("target/faces", target)
    masks_artifact = store.current("target/target_masks", target)
    context.log.info(f"reusing identity_model {model_artifact.fingerprint} of '{identity}' (built once, shared by every target)")
    model_config = identity_model_config(model_artifact)
    adapter = AdapterConfig(rank=config.rank, alpha=config.alpha, identity_replay_weight=config.identity_replay_weight)
    weights = model_artifact.path / "model.safetensors"
    hyper = config.model_dump()
    train_config = config.engine_config(
        settings.device, **pair_fingerprint_inputs(weights, model_config, adapter), code=LORA_VERSION,
        data=[identity_faces.content_hash, target_faces.content_hash, masks_artifact.content_hash])

    def write(out: Path) -> dict:
        ident, targ = FaceSet.load(identity_faces.path), FaceSet.load(target_faces.path)
        run_dir = store.partition_dir("_runs/lora_adapter", pair)
        training = train_pair_adapter(
            weights, model_config, np.asarray(ident.crops), np.asarray(ident.masks), np.asarray(targ.crops),
            np.load(masks_artifact.path / "masks.npy"), train_config, run_dir, adapter, config.holdout_every,
            config.samples_per_epoch, log=context.log.info,
            on_checkpoint=mirrored_checkpoints(context, store, run_dir, train_config))
        save_adapter(training.model, weights, out)
        result = training.result
        result.loss_curve_png(out / "loss_curve.png")
        np.save(out / "target_holdout.npy", training.target_holdout.astype(np.int64))
        return {"epochs": result.epochs, "resumed_from_epoch": result.resumed_from_epoch, "device": result.device,
                "duration_s": round(result.duration_seconds, 1), **{k: round(float(v), 6) for k, v in training.counts.items()},
                "final": {k: round(float(v), 6) for k, v in result.final_metrics.items()},
                "untrained": {k: round(float(v), 6) for k, v in training.untrained_metrics.items()},
                "loss_table_md": result.loss_table_markdown()}

    inputs = {"identity_model": model_artifact.content_hash, "identity_faces": identity_faces.content_hash,
              "target_faces": target_faces.content_hash, "target_masks": masks_artifact.content_hash}
    return run_stage(context, store, "pair/lora_adapter", LORA_VERSION, {**hyper, "device": settings.device_kind}, inputs, write)


def preview_video(target_faces: FaceSet, frames_path: Path, manifest, swapped, face_masks, out: Path, limit: int = 100) -> int:
    """The swapped faces pasted back into their target video frames (first video, up to `limit`)."""

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
        frames.append(paste_face(frame, swapped[i], face_masks[i], matrix, target_faces.crops.shape[1]))
    write_video(out, frames, 25)
    return len(frames)


@asset(key=AssetKey(["pair", "onnx_export"]), partitions_def=pair_partitions, group_name="pair", code_version=EXPORT_VERSION,
       deps=[AssetKey(["pair", "lora_adapter"]),
             AssetDep(AssetKey(["identity", "identity_model"]), partition_mapping=by_identity),
             AssetDep(AssetKey(["identity", "identity_profile"]), partition_mapping=by_identity),
             AssetDep(AssetKey(["target", "xseg_model"]), partition_mapping=by_target),
             AssetDep(AssetKey(["target", "frames"]), partition_mapping=by_target)],
       description="Merged swap model (adapted encoder → base decoder) as a verified DFM ONNX with .hash and card, "
                   "the target's XSeg beside it, evaluation vs a paste-the-identity baseline, previews; published "
                   "to models/trained/ and its index.json.")
@failure_policy
def onnx_export(context: AssetExecutionContext, settings: FacepipeSettings) -> MaterializeResult:
    store = settings.store
    identity, target = pair_keys(context)
    pair = f"{identity}|{target}"
    adapter_artifact = store.current("pair/lora_adapter", pair)
    model_artifact = store.current("identity/identity_model", identity)
    profile_artifact = store.current("identity/identity_profile", identity)
    identity_faces = store.current("identity/faces", identity)
    target_faces = store.current("target/faces", target)
    frames_artifact = store.current("target/frames", target)
    xseg_artifact = store.current("target/xseg_model", target)
    name = f"{identity}_{target}"

    def write(out: Path) -> dict:
        merged = merged_swap_model(model_artifact.path / "model.safetensors", adapter_artifact.path)
        size = identity_model_config(model_artifact).size
        targ = FaceSet.load(target_faces.path)
        held = np.load(adapter_artifact.path / "target_holdout.npy")
        held = held if len(held) else np.arange(min(8, len(targ)))
        dfm = merged.dfm_model()

        parity_crops = [cv2.resize(np.asarray(targ.crops[i]), (size, size), interpolation=cv2.INTER_AREA) for i in held[:8]]
        profile = json.loads((profile_artifact.path / "profile.json").read_text())
        swapped = swap_faces(dfm, np.asarray(targ.crops), size)
        evaluation = evaluate_swaps(np.asarray(targ.crops[held]), swapped.faces[held], profile,
                                    get_embedder(profile["embedder"]).prepare(),
                                    mean_identity_face(FaceSet.load(identity_faces.path).crops))
        metrics = evaluation.summary()
        lineage = {"identity_model": model_artifact.content_hash, "lora_adapter": adapter_artifact.content_hash,
                   "identity_profile": profile_artifact.content_hash, "target_faces": target_faces.content_hash,
                   "code_version": EXPORT_VERSION, "adapter_config": adapter_artifact.record.get("config")}
        exported = export_dfm(dfm, size, out / f"{name}.dfm", parity_crops, card={
            "name": name, "identity": identity, "target": target, "lineage": lineage, "metrics": metrics,
            "runtime": "FaceFusion deep_swapper: copy the .dfm into .assets/models/custom/"})
        for suffix in ("onnx", "hash", "json"):  # the target's occluder model, published beside the swap model
            (out / f"{target}_xseg.{suffix}").write_bytes((xseg_artifact.path / f"xseg.{suffix}").read_bytes())
        picks = evenly_spaced(len(held), 8)
        tiles = []
        for i in held[picks]:
            tiles += [cv2.resize(np.asarray(targ.crops[i]), (size, size)), swapped.faces[i], swapped.face_masks[i]]
        write_png(out / PREVIEW_FILE, contact_sheet(tiles, columns=6, thumb=size))
        manifest = pd.read_parquet(frames_artifact.path / "manifest.parquet")
        pasted = preview_video(targ, frames_artifact.path / "frames", manifest, swapped.faces, swapped.face_masks,
                               out / "preview.mp4")
        return {"metrics": metrics, "onnx_parity_max_abs_error": float(f"{exported.max_abs_error:.3g}"),
                "parity_tolerance": exported_tolerance(exported), "model_size": size,
                "preview_video": "preview.mp4" if pasted else None, "preview_video_frames": pasted,
                "identity_transfer_gain": metrics["identity"]["identity_transfer_gain"],
                "pose_following_margin_deg": metrics["pose_following_margin_deg"]}

    inputs = {"lora_adapter": adapter_artifact.content_hash, "identity_model": model_artifact.content_hash,
              "identity_profile": profile_artifact.content_hash, "target_faces": target_faces.content_hash,
              "xseg_model": xseg_artifact.content_hash, "frames": frames_artifact.content_hash}
    def publish_models(artifact: Artifact) -> None:
        files = [artifact.path / f"{name}.{s}" for s in ("dfm", "hash", "json")]
        xseg_files = [artifact.path / f"{target}_xseg.{s}" for s in ("onnx", "hash", "json")]
        published = publish(settings.models_path, name, files, {"kind": "swap", "format": "dfm", "identity": identity,
                                                                "target": target, "content_hash": artifact.content_hash})
        publish(settings.models_path, f"{target}_xseg", xseg_files, {"kind": "occluder", "format": "onnx", "target": target})
        context.log.info(f"published {name}: written {published['written'] or 'nothing (same bytes)'}")

    return run_stage(context, store, "pair/onnx_export", EXPORT_VERSION, {}, inputs, write, publish_models)


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
