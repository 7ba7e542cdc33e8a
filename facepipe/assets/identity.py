"""Identity assets: the identity profile (embeddings, outliers, quality) and its check."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
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

from facepipe.align import template_points
from facepipe.assets.failures import failure_policy
from facepipe.assets.stage import PREVIEW_FILE, run_stage
from facepipe.assets.training import TRAINING_POOL, TrainingConfig, mirrored_checkpoints
from facepipe.embed import get_embedder
from facepipe.export import DfmSwapModel, export_dfm
from facepipe.faces import FaceSet
from facepipe.identity_model import reconstruction_preview, train_identity_model
from facepipe.models.autoencoder import AutoencoderConfig, parameter_counts
from facepipe.partitions import identity_partitions
from facepipe.preview import write_png
from facepipe.profile import build_profile, crop_sharpness, profile_json_bytes
from facepipe.resources import FacepipeSettings
from facepipe.store import Artifact, atomic_write_bytes

# One training at a time: the instance limits this pool (.dagster_home/dagster.yaml, default 1).

PROFILE_VERSION = "2"  # 2: quality_stats.avg_face_score
IDENTITY_MODEL_VERSION = "1"
PROFILE_FILE = "profile.json"
EMBEDDINGS_FILE = "embeddings.parquet"
MIN_USABLE_FACES = 8
MIN_SELF_SIMILARITY = 0.5

faces_key = AssetKey(["identity", "faces"])


class ProfileConfig(Config):
    embedder: str = "auto"  # auto = arcface when a model pack is on disk, else dlib
    arcface_pack: str = ""  # insightface model pack folder (default ~/.insightface/models/buffalo_l)
    outlier_cutoff: float = 0.0  # 0 = the embedder's same-person threshold


@asset(key=AssetKey(["identity", "identity_profile"]), deps=[faces_key], partitions_def=identity_partitions,
       group_name="identity", code_version=PROFILE_VERSION,
       description="Per-face embeddings, outliers rejected, L2-normalised mean + std + quality stats as JSON; "
                   "published to models/identities/<key>.json.")
@failure_policy
def identity_profile(context: AssetExecutionContext, config: ProfileConfig, settings: FacepipeSettings) -> MaterializeResult:
    store, key = settings.store, context.partition_key
    faces_artifact = store.current("identity/faces", key)
    embedder = get_embedder(config.embedder, Path(config.arcface_pack).expanduser() if config.arcface_pack else None)
    described = embedder.describe()
    context.log.warning(f"EMBEDDER: {described['name']} ({described['dim']}-d, model sha256 {described['model_hash'][:12]}) "
                        f"chosen by embedder={config.embedder!r}")

    def write(out: Path) -> dict:
        faces = FaceSet.load(faces_artifact.path)
        size = faces.crops.shape[1]
        points5 = np.repeat(template_points(size)[None], len(faces), axis=0)
        embedder.prepare()
        rows = []
        for start in range(0, len(faces), 32):
            rows.append(embedder.embed(np.asarray(faces.crops[start:start + 32]), points5[start:start + 32]))
            context.log.info(f"embedded {min(start + 32, len(faces))}/{len(faces)} faces")
        profile, table = build_profile(
            key, np.concatenate(rows), described, faces.index["score"].to_numpy(),
            crop_sharpness(np.asarray(faces.crops), np.asarray(faces.masks)), np.asarray(faces.landmarks), size,
            face_ids=[f"{s}#{i}" for s, i in zip(faces.index["source"], faces.index["source_frame_index"])],
            cutoff=config.outlier_cutoff or None,
        )
        profile["lineage"] = {"faces": faces_artifact.content_hash, "code_version": PROFILE_VERSION}
        (out / PROFILE_FILE).write_bytes(profile_json_bytes(profile))
        table.to_parquet(out / EMBEDDINGS_FILE, index=False)
        stats = profile["quality_stats"]
        return {"embedder": described["name"], "embedding_dim": described["dim"], "num_frames": profile["num_frames"],
                "quality_stats": stats, "rejected": table.loc[~table["inlier"], "face_id"].tolist()}

    inputs = {"faces": faces_artifact.content_hash, "embedder": json.dumps(described, sort_keys=True)}
    def publish(artifact: Artifact) -> None:
        published = settings.models_path / "identities" / f"{key}.json"
        atomic_write_bytes(published, (artifact.path / PROFILE_FILE).read_bytes())
        context.log.info(f"profile published to {published}")

    return run_stage(context, store, "identity/identity_profile", PROFILE_VERSION, config.model_dump(), inputs, write, publish)


@asset_check(asset=identity_profile, partitions_def=identity_partitions, description=f"At least {MIN_USABLE_FACES} usable faces and self-similarity "
             f">= {MIN_SELF_SIMILARITY} (1 - mean distance to the centre / same-person threshold).")
def identity_profile_is_usable(context: AssetCheckExecutionContext, settings: FacepipeSettings) -> AssetCheckResult:
    profile = settings.store.current_record("identity/identity_profile", context.partition_key)["metadata"]
    used = int(profile["num_frames"])
    similarity = float(profile["quality_stats"]["self_similarity"])
    passed = used >= MIN_USABLE_FACES and similarity >= MIN_SELF_SIMILARITY
    return AssetCheckResult(passed=passed, metadata={"usable_faces": used, "self_similarity": similarity,
                                                     "min_usable_faces": MIN_USABLE_FACES,
                                                     "min_self_similarity": MIN_SELF_SIMILARITY})


def load_profile(folder: Path) -> dict:
    return json.loads((folder / PROFILE_FILE).read_text())


def load_embeddings(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / EMBEDDINGS_FILE)


class IdentityModelConfig(TrainingConfig):
    """CPU defaults train the sample in minutes; on a GPU try resolution 224-320, width 64+,
    latent_dim 512, depth 5, batch_size 32 (see README)."""

    epochs: int = 60
    batch_size: int = 16
    lr: float = 5e-4
    resolution: int = 96
    width: int = 24
    latent_dim: int = 256
    depth: int = 4
    samples_per_epoch: int = 256


@asset(key=AssetKey(["identity", "identity_model"]), deps=[faces_key], partitions_def=identity_partitions,
       group_name="identity", code_version=IDENTITY_MODEL_VERSION, pool=TRAINING_POOL,
       description="Per-identity autoencoder (encoder → dense bottleneck → decoder, BGR + mask) trained with the "
                   "shared engine; weights (safetensors) + a verified ONNX export in the DFM convention.")
@failure_policy
def identity_model(context: AssetExecutionContext, config: IdentityModelConfig, settings: FacepipeSettings) -> MaterializeResult:
    store, key = settings.store, context.partition_key
    faces_artifact = store.current("identity/faces", key)
    model_config = AutoencoderConfig(size=config.resolution, width=config.width, latent_dim=config.latent_dim,
                                     depth=config.depth)
    hyper = config.model_dump()
    train_config = config.engine_config(settings.device, faces=faces_artifact.content_hash, code=IDENTITY_MODEL_VERSION)

    def write(out: Path) -> dict:
        faces = FaceSet.load(faces_artifact.path)
        run_dir = store.partition_dir("_runs/identity_model", key)
        training = train_identity_model(
            np.asarray(faces.crops), np.asarray(faces.masks), model_config, train_config, run_dir,
            config.holdout_every, config.samples_per_epoch, context.log.info,
            mirrored_checkpoints(context, store, run_dir, train_config))
        result = training.result
        (out / "model.safetensors").write_bytes(result.weights_path.read_bytes())
        held = training.task.held_idx.numpy()
        parity_crops = [training.crops[i] for i in (held if len(held) else range(min(4, len(training.crops))))]
        lineage = {"faces": faces_artifact.content_hash, "code_version": IDENTITY_MODEL_VERSION, "config": hyper,
                   "seed": config.seed}
        holdout = result.final_metrics.get("holdout_l1", float("nan"))
        exported = export_dfm(DfmSwapModel.from_autoencoders(training.model), model_config.size, out / f"{key}.dfm",
                              parity_crops, card={"name": key, "kind": "identity reconstruction model",
                                                  "lineage": lineage, "metrics": {"holdout_l1": round(holdout, 6)}})
        result.loss_curve_png(out / "loss_curve.png")
        write_png(out / PREVIEW_FILE, reconstruction_preview(training.model, training.crops, held[:6] if len(held) else [0]))
        return {
            "epochs": result.epochs, "resumed_from_epoch": result.resumed_from_epoch, "device": result.device,
            "duration_s": round(result.duration_seconds, 1), "faces_trained_on": int(len(training.task.train_idx)),
            "holdout_faces": int(len(held)), "holdout_l1_trained": round(holdout, 6),
            "holdout_l1_untrained": round(training.untrained_holdout_l1, 6),
            "onnx_parity_max_abs_error": float(f"{exported.max_abs_error:.3g}"),
            "parameters": parameter_counts(training.model), "loss_table_md": result.loss_table_markdown(),
        }

    inputs = {"faces": faces_artifact.content_hash}
    run_config = {**hyper, "device": settings.device_kind}
    return run_stage(context, store, "identity/identity_model", IDENTITY_MODEL_VERSION, run_config, inputs, write)
