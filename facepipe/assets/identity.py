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
    MaterializeResult,
    asset,
    asset_check,
)

from facepipe.assets.curation import EmbedderConfig, curated_embeddings, embedder_version
from facepipe.assets.failures import failure_policy
from facepipe.assets.stage import PREVIEW_FILE, code_version_of, reads_outside, run_stage, upstream
from facepipe.assets.training import TRAINING_OP_TAGS, TrainingConfig, train_in_store
from facepipe.embed import get_embedder
from facepipe.export import export_dfm
from facepipe.faces import FaceSet, resize_crops
from facepipe.models.augment import AugmentConfig
from facepipe.models.autoencoder import AutoencoderConfig, parameter_counts
from facepipe.models.swap import DfmSwapModel
from facepipe.partition_settings import partition_config
from facepipe.partitions import identity_partitions
from facepipe.preview import write_png
from facepipe.profile import build_profile, crop_sharpness, profile_json_bytes
from facepipe.resources import FacepipeSettings
from facepipe.store import Artifact, write_if_changed
from facepipe.train import Trained
from facepipe.train.tasks.reconstruction import AdversarialConfig, ReconstructionTask, reconstruction_preview

# One training at a time: the instance limits this pool (.dagster_home/dagster.yaml, default 1).

PROFILE_VERSION = "3"  # 2: quality_stats.avg_face_score; 3: built from the curated faces
# 2: model_config.json beside the weights; 3: ICNR initialisation; 4: preview blended through the mask;
# 5: trained on the curated faces; 6: patch discriminator (adversarial_weight), colour jitter, random warp
# for the first epochs; 7: eyes-and-mouth priority in the loss (eyes_mouth_weight), optional FaceFusion sharpening
# of the inputs (sharpen), balanced sampling (balance_power); 8: trained channels-last (faster CPU steps);
# 9: fused AdamW and one separable blur for the SSIM statistics (faster steps; rounding differs); 10: the SSIM
# statistics in float32 under CUDA's fp16 autocast (there every step's gradients were NaN: nothing was learnt;
# CPU builds give the same bytes as 9)
IDENTITY_MODEL_VERSION = "10"
PROFILE_FILE = "profile.json"
EMBEDDINGS_FILE = "embeddings.parquet"
MIN_USABLE_FACES = 8
MIN_SELF_SIMILARITY = 0.5


class ProfileConfig(EmbedderConfig):
    outlier_cutoff: float = 0.0  # 0 = the embedder's same-person threshold


@reads_outside("identity/identity_profile")
def embedder_input(settings: FacepipeSettings, key: str, config: dict) -> dict[str, str]:
    """Which embedder the profile is built with (auto's pick depends on the machine)."""
    return {"embedder": embedder_version(config)}


@asset(key=AssetKey(["identity", "identity_profile"]), ins={"faces": upstream("identity/curated_faces")},
       partitions_def=identity_partitions, group_name="identity", code_version=PROFILE_VERSION,
       description="Per-face embeddings, outliers rejected, L2-normalised mean + std + quality stats as JSON; "
                   "published to models/identities/<key>.json.")
@failure_policy
def identity_profile(context: AssetExecutionContext, config: ProfileConfig, settings: FacepipeSettings,
                     faces: Artifact) -> MaterializeResult:
    key = context.partition_key
    embedder = get_embedder(config.embedder, config.arcface_pack)
    described = embedder.describe()
    context.log.warning(f"EMBEDDER: {described['name']} ({described['dim']}-d, model sha256 {described['model_hash'][:12]}) "
                        f"chosen by embedder={config.embedder!r}")

    def write(out: Path) -> dict:
        face_set = FaceSet.load(faces.path)
        size = face_set.crops.shape[1]
        embeddings = curated_embeddings(faces.path, described)
        if embeddings is not None:
            context.log.info(f"reusing the {len(embeddings)} embeddings curation computed with the same embedder")
        else:
            embeddings = embedder.prepare().embed_aligned(
                face_set.crops, lambda done, total: context.log.info(f"embedded {done}/{total} faces"))
        profile, table = build_profile(
            key, embeddings, described, face_set.index["score"].to_numpy(),
            crop_sharpness(np.asarray(face_set.crops), np.asarray(face_set.masks)), np.asarray(face_set.landmarks), size,
            face_ids=[f"{s}#{i}" for s, i in zip(face_set.index["source"], face_set.index["source_frame_index"])],
            cutoff=config.outlier_cutoff or None,
        )
        profile["lineage"] = {"faces": faces.content_hash, "code_version": code_version_of(context)}
        (out / PROFILE_FILE).write_bytes(profile_json_bytes(profile))
        table.to_parquet(out / EMBEDDINGS_FILE, index=False)
        stats = profile["quality_stats"]
        return {"embedder": described["name"], "embedding_dim": described["dim"], "num_frames": profile["num_frames"],
                "quality_stats": stats, "rejected": table.loc[~table["inlier"], "face_id"].tolist()}

    def publish(artifact: Artifact) -> None:
        published = settings.models_path / "identities" / f"{key}.json"
        written = write_if_changed(published, (artifact.path / PROFILE_FILE).read_bytes())
        context.log.info(f"profile published to {published}" + ("" if written else " (same bytes, not rewritten)"))

    return run_stage(context, settings, config.model_dump(), write, publish)


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

    # 150: what the demo affords in its 15 minutes now that `facepipe build` trains on both cores;
    # following the target emerges from ~150-200 epochs (docs/swap_quality.md).
    epochs: int = 150
    # 8, not 16: at the CPU budget the decoder is short of optimizer steps, not of faces seen, and
    # twice the steps for the same faces sharpen it (kim, 150 epochs, held-out reconstructions:
    # sharpness 0.23 -> 0.38 of the faces', held-out L1 0.0194 -> 0.0167, 4 % more time alone; batch 4:
    # 0.45 but L1 0.0197 and 40 % more time; batch 16 at twice the learning rate: 0.34, L1 0.0210).
    batch_size: int = 8
    lr: float = 5e-4
    resolution: int = 96
    width: int = 24
    latent_dim: int = 256
    depth: int = 4
    samples_per_epoch: int = 256
    # german_news's 450 training faces (of 500): the set the quality preset's hour was measured on.
    # A larger identity trains on a slice of its faces each epoch, as many steps as that one.
    max_samples_per_epoch: int = 450
    # The patch discriminator's weight beside the pixel losses (0: off) and the epoch from which it
    # scores the faces (facepipe.models.discriminator): sharper faces for ~50 % more time per epoch.
    adversarial_weight: float = 0.1
    adversarial_from_epoch: int = 20
    # Feature matching (pix2pixHD): L1 between the discriminator's hidden activations on each
    # reconstruction and on its own face, scored with the discriminator (0: off). Measured at the demo
    # defaults on the four dev pairs (docs/swap_quality.md): 3 took kim -> mead's swap sharpness
    # 0.23 -> 0.29 (kim's own crops are soft), but the other three pairs' by +0.02, -0.05 and -0.04:
    # off, one setting away for a soft identity.
    feature_matching_weight: float = 0.0
    # Epochs with the elastic warp on the input (DeepFaceLab's random warp; None: every epoch).
    # Switching it off late let held-out reconstructions keep more detail and made a real cross-person
    # swap follow better (german_news -> obama, 60 epochs, off from 40: held-out L1 0.0186 -> 0.0172,
    # mouth following 0.15 -> 0.41, yaw 0.02 -> 0.62).
    random_warp_epochs: int | None = 40
    # Extra L1 over the eyes and mouth (DeepFaceLab's eyes_mouth_prio; facepipe.models.losses): the
    # few pixels a blink or a parted lip changes, which a face-wide average rounds away. Measured
    # (german_news -> obama, these defaults, 60 held-out frames, with the adapter's own at 1 too):
    # mouth following -0.45 -> 0.06, eyes 0.28 -> 0.30, pitch 0.92 -> 0.95, sharpness 0.14 -> 0.16,
    # yaw 0.50 -> 0.29 (noise on one run of 60 frames is about +-0.2).
    eyes_mouth_weight: float = 1.0
    # Draw rare poses and expressions (a blink, a wide mouth, a turned head) more often: each face's
    # weight is its rarity to this power (facepipe.train.balance; 0: every face alike). Measured
    # (german_news -> obama, these defaults, 60 held-out frames, one run each): 0 -> 0.5 took mouth
    # following -0.18 -> 0.08, eyes -0.05 -> 0.31, yaw -0.05 -> 0.64, sharpness 0.16 -> 0.18, pitch 0.89 -> 0.88.
    balance_power: float = 0.5
    # Share of training inputs sharpened as FaceFusion feeds them (0: off, for DeepFaceLive only).
    sharpen: float = AugmentConfig.sharpen
    # Share of faces mirrored in training (facepipe.models.augment): the swap can only turn as far
    # as the identity's faces do, and a video of a person turning one way says nothing about the
    # other way (kim's faces turn -0..12 deg, mead's -12..-5).
    flip: float = 0.5
    # Share of faces turned in 3D by up to turn_deg either way (facepipe.models.turn): poses beyond
    # the identity's own, for targets that turn further than its media do.
    turn: float = 0.0
    turn_deg: float = 15.0
    # Share of training inputs cut as the runtimes cut them (facepipe.models.augment): read from the
    # stored 256 px crop straight at the model's size, bilinear, so the encoder learns from crops as
    # sharp as those FaceFusion and DeepFaceLive feed it. Off: measured (kim -> mead, the export's
    # low-pass off), the swaps followed another person's face worse (eyes 0.79 -> 0.60, yaw 0.82 ->
    # 0.73, pitch 0.67 -> 0.52; docs/swap_quality.md, "The crop the model is fed").
    runtime_crop: float = AugmentConfig.runtime_crop

    def architecture(self) -> AutoencoderConfig:
        return AutoencoderConfig(size=self.resolution, width=self.width, latent_dim=self.latent_dim, depth=self.depth)

    def adversarial(self) -> AdversarialConfig:
        return AdversarialConfig(weight=self.adversarial_weight, from_epoch=self.adversarial_from_epoch,
                                 feature_matching=self.feature_matching_weight)

    def task(self, face_set: FaceSet) -> ReconstructionTask:
        """The training task these settings make of an identity's face set (also what
        benchmarks/identity_reconstruction.py trains)."""
        return ReconstructionTask.from_faces(face_set.crops, face_set.masks, self.architecture(), self.holdout_every,
                                             self.samples_per_epoch, adversarial=self.adversarial(),
                                             random_warp_epochs=self.random_warp_epochs,
                                             augment=AugmentConfig(sharpen=self.sharpen, flip=self.flip, turn=self.turn, turn_deg=self.turn_deg,
                                                                  runtime_crop=self.runtime_crop),
                                             landmarks=face_set.landmarks, eyes_mouth_weight=self.eyes_mouth_weight,
                                             balance_power=self.balance_power,
                                             max_samples_per_epoch=self.max_samples_per_epoch)


# Under this many faces an identity model has too little to learn a talking face from: 8 photos of one
# woman gave swaps whose mouths opened 0.15 as wide as their target's, 10 frames of kim's video a swap
# that neither turned nor nodded with mead and smeared, 30 frames of it one that followed as all 223
# do (docs/swap_quality.md, "An identity from a handful of photos"); the dev identities' videos give
# 200-500 faces, the sample 77. It is also where the default holdout_every (10) holds no face out.
FEW_FACES = 20


def few_faces_warning(identity: str, faces: int) -> str | None:
    """The line telling the user that an identity of ``faces`` faces is too small for a swap that
    follows its target, or None."""
    if faces >= FEW_FACES:
        return None
    return (f"identity '{identity}' has {faces} face(s): an identity model paints only the expressions and head turns "
            f"its faces show, so the swap will keep their expression while the target talks (8 photos gave swaps whose "
            f"mouths opened 0.15 as wide as the target's). Add a video of the person talking and turning to "
            f"data/identities/{identity}/ (a few seconds give a few hundred faces)")


@asset(key=AssetKey(["identity", "identity_model"]), ins={"faces": upstream("identity/curated_faces")},
       partitions_def=identity_partitions, group_name="identity", code_version=IDENTITY_MODEL_VERSION, op_tags=TRAINING_OP_TAGS,
       description="Per-identity autoencoder (encoder → dense bottleneck → decoder, BGR + mask) trained with the "
                   "shared engine; weights (safetensors) + config, and a verified ONNX export in the DFM convention.")
@failure_policy
def identity_model(context: AssetExecutionContext, config: IdentityModelConfig, settings: FacepipeSettings,
                   faces: Artifact) -> MaterializeResult:
    config = partition_config(context, settings, config)
    key, model_config = context.partition_key, config.architecture()
    warning = few_faces_warning(key, len(FaceSet.load(faces.path)))
    if warning:
        context.log.warning(warning)

    def make_task() -> ReconstructionTask:
        return config.task(FaceSet.load(faces.path))

    def write(trained: Trained, out: Path) -> dict:
        model, task = trained.model, trained.task
        model.save(out)
        held = task.held_idx.numpy()
        shown = held if len(held) else np.arange(min(4, len(task.images)))
        parity_crops = list(resize_crops(FaceSet.load(faces.path).crops[shown], model_config.size))
        lineage = {"faces": faces.content_hash, "code_version": code_version_of(context), "config": config.model_dump(),
                   "seed": config.seed}
        # A set of fewer than 2 x holdout_every faces (a handful of photos) holds none out, so it has
        # no held-out error to put on the card (faces.holdout_split).
        final = trained.result.final_metrics
        metrics = {"holdout_l1": round(final["holdout_l1"], 6)} if "holdout_l1" in final else {}
        exported = export_dfm(DfmSwapModel.from_autoencoders(model), model_config.size, out / f"{key}.dfm",
                              parity_crops, card={"name": key, "kind": "identity reconstruction model",
                                                  "lineage": lineage, "metrics": metrics})
        write_png(out / PREVIEW_FILE, reconstruction_preview(model, task.images, held[:6] if len(held) else [0]))
        return {"train_faces": int(len(task.train_idx)), "holdout_faces": int(len(held)),
                "onnx_parity_max_abs_error": float(f"{exported.max_abs_error:.3g}"), "parameters": parameter_counts(model)}

    return train_in_store(context, settings, config, make_task, write)
