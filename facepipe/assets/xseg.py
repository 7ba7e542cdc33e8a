"""Target assets: the XSeg occlusion mask model and the masks it gives every target face."""

from pathlib import Path

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    asset,
    asset_check,
)
from safetensors.torch import load_file

from facepipe.assets.failures import failure_policy
from facepipe.assets.stage import PREVIEW_FILE, run_stage
from facepipe.assets.training import TRAINING_POOL, TrainingConfig, mirrored_checkpoints
from facepipe.export import export_verified
from facepipe.faces import FaceSet
from facepipe.labels import MASKS_FOLDER, build_labels, user_masks_digest
from facepipe.models.xseg import (
    XSEG_SIZE,
    XSegNHWC,
    XSegUNet,
    mean_iou,
    parameter_count,
)
from facepipe.partitions import media_dir, target_partitions
from facepipe.preview import contact_sheet, evenly_spaced, outline, write_png
from facepipe.resources import FacepipeSettings
from facepipe.xseg_training import predict_masks, train_xseg, xseg_preview

XSEG_VERSION = "1"
TARGET_MASKS_VERSION = "1"
# The check's floor on held-out IoU against the training labels (clean faces). Measured on the
# sample with the CPU defaults: see the README; a model below it is not fit to mask swaps.
MIN_HOLDOUT_IOU = 0.8
XSEG_ONNX = "xseg.onnx"
MASKS_FILE = "masks.npy"

faces_key = AssetKey(["target", "faces"])


class XSegConfig(TrainingConfig):
    """CPU defaults (width 8, trained at 128 px, exported at 256); on a GPU use width 32, resolution 256."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    width: int = 8
    depth: int = 5
    resolution: int = 128  # training size; must divide 256
    samples_per_epoch: int = 96
    occlusion_probability: float = 0.7  # share of training samples with a synthetic occluder pasted on


def frame_sizes(frames_manifest: pd.DataFrame) -> dict[str, tuple[int, int]]:
    first = frames_manifest.drop_duplicates("source")
    return {row.source: (int(row.width), int(row.height)) for row in first.itertuples()}


@asset(key=AssetKey(["target", "xseg_model"]), deps=[faces_key], partitions_def=target_partitions, group_name="target",
       code_version=XSEG_VERSION, pool=TRAINING_POOL,
       description="Occlusion-aware face segmentation (U-Net) trained on the target's faces with user masks or "
                   "landmark hulls plus synthetic occluders; IoU on held-out faces; verified ONNX export.")
@failure_policy
def xseg_model(context: AssetExecutionContext, config: XSegConfig, settings: FacepipeSettings) -> MaterializeResult:
    store, key = settings.store, context.partition_key
    faces_artifact = store.current("target/faces", key)
    frames_artifact = store.current("target/frames", key)
    masks_dir = media_dir(settings.data_path, "target", key) / MASKS_FOLDER
    masks_digest = user_masks_digest(masks_dir)
    hyper = config.model_dump()
    train_config = config.engine_config(settings.device, faces=faces_artifact.content_hash, user_masks=masks_digest,
                                        code=XSEG_VERSION)

    def write(out: Path) -> dict:
        faces = FaceSet.load(faces_artifact.path)
        # A bad user mask raises UserMaskError naming the file: failure_policy fails it without retry.
        labels, report = build_labels(faces.index, np.asarray(faces.masks), masks_dir,
                                      frame_sizes(pd.read_parquet(frames_artifact.path / "manifest.parquet")))
        if report.count:
            context.log.info(f"user masks label {report.count} face(s): {sorted(report.files)}")
        run_dir = store.partition_dir("_runs/xseg_model", key)
        training = train_xseg(np.asarray(faces.crops), labels, config.width, config.depth, config.resolution,
                              train_config, run_dir, config.holdout_every, config.samples_per_epoch,
                              config.occlusion_probability, context.log.info,
                              mirrored_checkpoints(context, store, run_dir, train_config))
        result, held = training.result, training.task.held_idx
        (out / "model.safetensors").write_bytes(result.weights_path.read_bytes())
        deployed = XSegNHWC(training.model, config.resolution)
        parity = [[np.asarray(faces.crops[i], np.float32)[None] / 255] for i in (held[:4] if len(held) else [0])]
        lineage = {"faces": faces_artifact.content_hash, "user_masks": masks_digest, "code_version": XSEG_VERSION,
                   "config": hyper}
        metrics = {k: round(v, 4) for k, v in result.final_metrics.items() if k.startswith("holdout")}
        exported = export_verified(deployed, parity, out / XSEG_ONNX, ["input"], ["output"], {
            "name": f"{key}_xseg", "kind": "XSeg occluder mask model (FaceFusion occluder convention)",
            "inputs": {"input": {"shape": [1, XSEG_SIZE, XSEG_SIZE, 3], "dtype": "float32", "layout": "NHWC",
                                 "colour_order": "BGR", "range": [0, 1]}},
            "outputs": {"output": {"shape": [1, XSEG_SIZE, XSEG_SIZE, 1], "range": [0, 1], "meaning": "1 = visible face"}},
            "template": "dfl_whole_face", "lineage": lineage, "metrics": metrics})
        predicted = predict_masks(deployed, np.asarray(faces.crops[held])) if len(held) else labels[:0]
        if len(held):
            write_png(out / PREVIEW_FILE, xseg_preview(np.asarray(faces.crops[held]), labels[held], predicted,
                                                       np.arange(min(6, len(held)))))
        result.loss_curve_png(out / "loss_curve.png")
        return {"epochs": result.epochs, "resumed_from_epoch": result.resumed_from_epoch, "device": result.device,
                "duration_s": round(result.duration_seconds, 1), "train_faces": int(len(training.task.train_idx)),
                "holdout_faces": int(len(held)), **metrics, "user_labels": report.as_metadata(),
                "parameters": parameter_count(training.model),
                "onnx_parity_max_abs_error": float(f"{exported.max_abs_error:.3g}"),
                "loss_table_md": result.loss_table_markdown()}

    inputs = {"faces": faces_artifact.content_hash, "user_masks": masks_digest}
    return run_stage(context, store, "target/xseg_model", XSEG_VERSION, {**hyper, "device": settings.device_kind}, inputs, write)


@asset_check(asset=xseg_model, partitions_def=target_partitions,
             description=f"Held-out IoU on clean faces >= {MIN_HOLDOUT_IOU}.")
def xseg_holdout_iou(context: AssetCheckExecutionContext, settings: FacepipeSettings) -> AssetCheckResult:
    metadata = settings.store.current_record("target/xseg_model", context.partition_key)["metadata"]
    iou = metadata.get("holdout_iou_clean")
    passed = iou is not None and iou >= MIN_HOLDOUT_IOU
    return AssetCheckResult(passed=bool(passed), metadata={
        "holdout_iou_clean": iou, "holdout_iou_occluded": metadata.get("holdout_iou_occluded"), "floor": MIN_HOLDOUT_IOU})


def load_deployed_xseg(artifact_path: Path, config: dict) -> XSegNHWC:
    unet = XSegUNet(width=config["width"], depth=config["depth"])
    unet.load_state_dict(load_file(str(artifact_path / "model.safetensors")))
    return XSegNHWC(unet, config["resolution"]).eval()


@asset(key=AssetKey(["target", "target_masks"]), deps=[xseg_model, faces_key], partitions_def=target_partitions,
       group_name="target", code_version=TARGET_MASKS_VERSION,
       description="The XSeg model applied to every target face: masks.npy [N,256,256] uint8 beside the faces array.")
@failure_policy
def target_masks(context: AssetExecutionContext, settings: FacepipeSettings) -> MaterializeResult:
    store, key = settings.store, context.partition_key
    faces_artifact = store.current("target/faces", key)
    xseg_artifact = store.current("target/xseg_model", key)

    def write(out: Path) -> dict:
        faces = FaceSet.load(faces_artifact.path)
        deployed = load_deployed_xseg(xseg_artifact.path, xseg_artifact.record["config"])
        masks = predict_masks(deployed, faces.crops)
        np.save(out / MASKS_FILE, masks)
        picks = evenly_spaced(len(masks), 32)
        write_png(out / PREVIEW_FILE, contact_sheet([outline(faces.crops[i], masks[i], (0, 0, 255)) for i in picks]))
        coverage = (masks > 127).mean(axis=(1, 2))
        return {"faces": int(len(masks)), "mean_face_coverage": round(float(coverage.mean()), 4),
                "hull_agreement_iou": round(mean_iou(masks > 127, np.asarray(faces.masks) > 127), 4)}

    inputs = {"faces": faces_artifact.content_hash, "xseg_model": xseg_artifact.content_hash}
    return run_stage(context, store, "target/target_masks", TARGET_MASKS_VERSION, {}, inputs, write)
