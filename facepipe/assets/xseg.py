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

from facepipe.assets.curation import dropped_frames
from facepipe.assets.failures import failure_policy
from facepipe.assets.stage import PREVIEW_FILE, code_version_of, reads_outside, run_stage, upstream
from facepipe.assets.training import TRAINING_OP_TAGS, TrainingConfig, train_in_store
from facepipe.curation_file import CURATION_FILE
from facepipe.export import export_verified
from facepipe.faces import FaceSet
from facepipe.labels import MASKS_FOLDER, build_labels, user_masks_digest
from facepipe.models.counting import count_parameters
from facepipe.models.xseg import XSEG_SIZE, XSegNHWC, mean_iou, predict_masks
from facepipe.partition_settings import partition_config
from facepipe.partitions import media_dir, target_partitions
from facepipe.preview import contact_sheet, evenly_spaced, outline, write_png
from facepipe.resources import FacepipeSettings
from facepipe.store import Artifact
from facepipe.train import Trained
from facepipe.train.tasks.xseg import XSegTask, xseg_preview

# 2: model_config.json beside the weights; 3: trained on the curated faces; 4: trained channels-last
# (faster CPU steps); 5: fused AdamW (faster steps; rounding differs)
XSEG_VERSION = "5"
TARGET_MASKS_VERSION = "2"  # 2: masks of the curated faces
# The check's floor on held-out IoU against the training labels (clean faces). Measured on the
# sample with the CPU defaults: see the README; a model below it is not fit to mask swaps.
MIN_HOLDOUT_IOU = 0.8
XSEG_ONNX = "xseg.onnx"
MASKS_FILE = "masks.npy"


class XSegConfig(TrainingConfig):
    """CPU defaults (width 8, trained at 128 px, exported at 256); on a GPU use width 32, resolution 256."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    width: int = 8
    depth: int = 5
    resolution: int = 128  # training size; must divide 256
    samples_per_epoch: int = 96
    max_samples_per_epoch: int = 160  # as the adapter's, for the same target faces
    occlusion_probability: float = 0.7  # share of training samples with a synthetic occluder pasted on


def frame_sizes(frames_manifest: pd.DataFrame) -> dict[str, tuple[int, int]]:
    first = frames_manifest.drop_duplicates("source")
    return {row.source: (int(row.width), int(row.height)) for row in first.itertuples()}


def user_masks_dir(settings: FacepipeSettings, key: str) -> Path:
    return media_dir(settings.data_path, "target", key) / MASKS_FOLDER


@reads_outside("target/xseg_model")
def user_masks_input(settings: FacepipeSettings, key: str, config: dict) -> dict[str, str]:
    """The user's masks in the target folder (they label faces instead of the hulls)."""
    return {"user_masks": user_masks_digest(user_masks_dir(settings, key))}


@asset(key=AssetKey(["target", "xseg_model"]),
       ins={"faces": upstream("target/curated_faces"), "frames": upstream("target/frames")},
       partitions_def=target_partitions, group_name="target", code_version=XSEG_VERSION, op_tags=TRAINING_OP_TAGS,
       description="Occlusion-aware face segmentation (U-Net) trained on the target's faces with user masks or "
                   "landmark hulls plus synthetic occluders; IoU on held-out faces; verified ONNX export.")
@failure_policy
def xseg_model(context: AssetExecutionContext, config: XSegConfig, settings: FacepipeSettings, faces: Artifact,
               frames: Artifact) -> MaterializeResult:
    config = partition_config(context, settings, config)
    key = context.partition_key
    face_set = FaceSet.load(faces.path)
    masks_dir = user_masks_dir(settings, key)
    report = None

    def make_task() -> XSegTask:
        nonlocal report
        # A bad user mask raises UserMaskError naming the file: failure_policy fails it without retry.
        labels, report = build_labels(face_set.index, np.asarray(face_set.masks), masks_dir,
                                      frame_sizes(pd.read_parquet(frames.path / "manifest.parquet")),
                                      dropped_frames(faces.path))
        if report.count:
            context.log.info(f"user masks label {report.count} face(s): {sorted(report.files)}")
        if report.not_used:
            context.log.warning(f"user masks of faces that curation dropped, not used: {report.not_used} (keep "
                                f"those frames in {media_dir(settings.data_path, 'target', key) / CURATION_FILE} "
                                "to train on them)")
        return XSegTask.from_faces(np.asarray(face_set.crops), labels, config.width, config.depth, config.resolution,
                                   config.holdout_every, config.samples_per_epoch, config.occlusion_probability,
                                   config.max_samples_per_epoch)

    def write(trained: Trained, out: Path) -> dict:
        task, held = trained.task, trained.task.held_idx
        deployed = XSegNHWC(trained.model, config.resolution)
        deployed.save(out)
        parity = [[np.asarray(face_set.crops[i], np.float32)[None] / 255] for i in (held[:4] if len(held) else [0])]
        lineage = {"faces": faces.content_hash, "user_masks": user_masks_digest(masks_dir), "code_version": code_version_of(context),
                   "config": config.model_dump()}
        metrics = {k: round(v, 4) for k, v in trained.result.final_metrics.items() if k.startswith("holdout")}
        exported = export_verified(deployed, parity, out / XSEG_ONNX, ["input"], ["output"], {
            "name": f"{key}_xseg", "kind": "XSeg occluder mask model (FaceFusion occluder convention)",
            "inputs": {"input": {"shape": [1, XSEG_SIZE, XSEG_SIZE, 3], "dtype": "float32", "layout": "NHWC",
                                 "colour_order": "BGR", "range": [0, 1]}},
            "outputs": {"output": {"shape": [1, XSEG_SIZE, XSEG_SIZE, 1], "range": [0, 1], "meaning": "1 = visible face"}},
            "template": "dfl_whole_face", "lineage": lineage, "metrics": metrics})
        if len(held):
            predicted = predict_masks(deployed, np.asarray(face_set.crops[held]))
            write_png(out / PREVIEW_FILE, xseg_preview(np.asarray(face_set.crops[held]), task.labels[held], predicted,
                                                       np.arange(min(6, len(held)))))
        return {"train_faces": int(len(task.train_idx)), "holdout_faces": int(len(held)), **metrics,
                "user_labels": report.as_metadata(), "parameters": count_parameters(trained.model),
                "onnx_parity_max_abs_error": float(f"{exported.max_abs_error:.3g}")}

    return train_in_store(context, settings, config, make_task, write)


@asset_check(asset=xseg_model, partitions_def=target_partitions,
             description=f"Held-out IoU on clean faces >= {MIN_HOLDOUT_IOU}.")
def xseg_holdout_iou(context: AssetCheckExecutionContext, settings: FacepipeSettings) -> AssetCheckResult:
    metadata = settings.store.current_record("target/xseg_model", context.partition_key)["metadata"]
    iou = metadata.get("holdout_iou_clean")
    passed = iou is not None and iou >= MIN_HOLDOUT_IOU
    return AssetCheckResult(passed=bool(passed), metadata={
        "holdout_iou_clean": iou, "holdout_iou_occluded": metadata.get("holdout_iou_occluded"), "floor": MIN_HOLDOUT_IOU})


@asset(key=AssetKey(["target", "target_masks"]),
       ins={"faces": upstream("target/curated_faces"), "xseg_model": upstream("target/xseg_model")},
       partitions_def=target_partitions, group_name="target", code_version=TARGET_MASKS_VERSION,
       description="The XSeg model applied to every target face: masks.npy [N,256,256] uint8 beside the faces array.")
@failure_policy
def target_masks(context: AssetExecutionContext, settings: FacepipeSettings, faces: Artifact,
                 xseg_model: Artifact) -> MaterializeResult:
    def write(out: Path) -> dict:
        face_set = FaceSet.load(faces.path)
        masks = predict_masks(XSegNHWC.from_folder(xseg_model.path), face_set.crops)
        np.save(out / MASKS_FILE, masks)
        picks = evenly_spaced(len(masks), 32)
        write_png(out / PREVIEW_FILE, contact_sheet([outline(face_set.crops[i], masks[i], (0, 0, 255)) for i in picks]))
        coverage = (masks > 127).mean(axis=(1, 2))
        return {"faces": int(len(masks)), "mean_face_coverage": round(float(coverage.mean()), 4),
                "hull_agreement_iou": round(mean_iou(masks > 127, np.asarray(face_set.masks) > 127), 4)}

    return run_stage(context, settings, {}, write)
