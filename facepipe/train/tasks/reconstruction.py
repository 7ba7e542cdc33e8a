"""Training the per-identity autoencoder: reconstruct the identity's aligned faces.

The same random homography on input and target (so the model learns to follow pose), an elastic
warp on the input only for the first ``random_warp_epochs`` epochs (so it learns the face instead of
copying pixels; afterwards it learns the detail, as DeepFaceLab users switch random warp off
late), masked L1 + DSSIM + mask loss, and (when
``AdversarialConfig.weight`` > 0) a patch discriminator's verdict on the face from
``AdversarialConfig.from_epoch`` on (facepipe.models.discriminator: sharper faces at the same
pixel error). With landmarks given, an extra L1 over the eyes and mouth (``LossWeights.eyes_mouth``)
and faces drawn by the rarity of their pose and expression (facepipe.train.balance). A fixed share
of faces is held out to measure reconstruction error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np
import torch
from torch import nn

from facepipe.faces import feature_masks, holdout_split, resize_crops
from facepipe.models.augment import (AugmentConfig, augment_with_features, faces_to_tensors, masks_to_tensor, stored_faces,
                                     tensors_to_crops)
from facepipe.models.autoencoder import AutoencoderConfig, IdentityAutoencoder
from facepipe.models.discriminator import AdversarialAutoencoder, PatchDiscriminator, adversarial_losses
from facepipe.models.losses import LossWeights, masked_l1, reconstruction_loss
from facepipe.models.turn import crops_mesh, turn_table
from facepipe.preview import blend, contact_sheet
from facepipe.train.balance import draw_rows, expression_measures, rarity_weights
from facepipe.train.epochs import epoch_size
from facepipe.train.task import TrainTask


@dataclass(frozen=True)
class AdversarialConfig:
    """The discriminator term: its weight beside the pixel losses (0: none, no discriminator is
    built) and the epoch (0-based) from which the autoencoder is scored by it. The discriminator
    itself learns from the first epoch, so it is a fair judge by then; the autoencoder first
    learns the face from the pixel losses alone, as DeepFaceLab users switch GAN on late."""

    weight: float = 0.0
    from_epoch: int = 0
    discriminator_width: int = 32
    # Weight of the feature-matching term (facepipe.models.discriminator.adversarial_losses),
    # scored from from_epoch like the verdict.
    feature_matching: float = 0.0

    def __post_init__(self) -> None:
        if not self.weight >= 0 or not self.feature_matching >= 0 or self.from_epoch < 0 or self.discriminator_width < 1:
            raise ValueError(f"AdversarialConfig needs weight >= 0, feature_matching >= 0, from_epoch >= 0 and discriminator_width >= 1, got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class ReconstructionTask(TrainTask):
    """Reconstruct aligned faces through the autoencoder; held-out masked L1 as the metric."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, train_idx, held_idx, model_config: AutoencoderConfig,
                 samples_per_epoch: int = 0, augment: AugmentConfig = AugmentConfig(),
                 adversarial: AdversarialConfig = AdversarialConfig(), random_warp_epochs: int | None = None,
                 feature_masks: torch.Tensor | None = None, loss_weights: LossWeights = LossWeights(),
                 sample_weights: torch.Tensor | None = None, turns: np.ndarray | None = None,
                 sources: torch.Tensor | None = None, max_samples_per_epoch: int = 0):
        # feature_masks [N, 1, S, S]: the eyes and mouth, scored by loss_weights.eyes_mouth.
        self.images, self.masks, self.feature_masks, self.loss_weights = images, masks, feature_masks, loss_weights
        # sample_weights [len(train_idx)]: draw training faces in proportion (facepipe.train.balance); None: uniform.
        self.sample_weights = sample_weights
        # turns [N, K, c, c, 2]: each face's turn table (facepipe.models.turn), for head turns.
        self.turns = turns
        # sources [N, 3, S0, S0] uint8: the faces as stored, for inputs cut as the runtimes cut them.
        self.sources = sources
        self.train_idx = torch.as_tensor(train_idx, dtype=torch.long)
        self.held_idx = torch.as_tensor(held_idx, dtype=torch.long)
        self.num_samples = epoch_size(len(self.train_idx), samples_per_epoch, max_samples_per_epoch)
        self.training_faces = len(self.train_idx)
        self.best_metric = "holdout_l1" if len(self.held_idx) else "loss"
        self.model_config, self.augment, self.adversarial = model_config, augment, adversarial
        if random_warp_epochs is not None and random_warp_epochs < 0:
            raise ValueError(f"random_warp_epochs must be >= 0 or None (always), got {random_warp_epochs}")
        self.random_warp_epochs = random_warp_epochs
        self.epoch = 0  # set by the engine (start_epoch)

    @classmethod
    def from_faces(cls, crops: np.ndarray, masks: np.ndarray, model_config: AutoencoderConfig, holdout_every: int = 10,
                   samples_per_epoch: int = 0, augment: AugmentConfig = AugmentConfig(),
                   adversarial: AdversarialConfig = AdversarialConfig(),
                   random_warp_epochs: int | None = None, landmarks: np.ndarray | None = None,
                   eyes_mouth_weight: float = 0.0, balance_power: float = 0.0,
                   max_samples_per_epoch: int = 0) -> ReconstructionTask:
        """From stored crops [N, S0, S0, 3] BGR uint8 and hull masks [N, S0, S0], resized once to the
        model size; with ``eyes_mouth_weight`` > 0 the crop-space ``landmarks`` [N, 478, 2] give the
        eyes-and-mouth masks that term weighs, with ``balance_power`` > 0 the rarity of each face's
        pose and expression (facepipe.train.balance); with ``augment.turn`` > 0 FaceMesh reads each
        crop's points with depth once and solves its turns, for the head turns (facepipe.models.turn)."""
        size = model_config.size
        images, mask_tensor = faces_to_tensors(resize_crops(crops, size), resize_crops(masks, size))
        train_idx, held_idx = holdout_split(len(images), holdout_every)
        features = eyes_mouth_tensor(landmarks, crops.shape[1], size, eyes_mouth_weight)
        weights = None
        if balance_power > 0:
            if landmarks is None:
                raise ValueError("balancing poses and expressions needs the faces' crop-space landmarks")
            weights = rarity_weights(expression_measures(np.asarray(landmarks)[train_idx], crops.shape[1]), balance_power)
        turns = turn_table(crops_mesh(crops, size), augment.turn_deg, size) if augment.turn > 0 else None
        sources = stored_faces(crops) if augment.runtime_crop > 0 else None
        return cls(images, mask_tensor, train_idx, held_idx, model_config, samples_per_epoch, augment, adversarial,
                   random_warp_epochs, features, LossWeights(eyes_mouth=eyes_mouth_weight), weights, turns, sources,
                   max_samples_per_epoch)

    def build_model(self) -> nn.Module:
        autoencoder = IdentityAutoencoder(self.model_config)
        if not self.adversarial.weight:
            return autoencoder
        return AdversarialAutoencoder(autoencoder, PatchDiscriminator(self.adversarial.discriminator_width))

    def deliverable(self, model: nn.Module) -> IdentityAutoencoder:
        return model.autoencoder if isinstance(model, AdversarialAutoencoder) else model

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_augment(self) -> AugmentConfig:
        """This epoch's augmentation: the elastic warp only during the first random_warp_epochs."""
        if self.random_warp_epochs is None or self.epoch < self.random_warp_epochs:
            return self.augment
        return replace(self.augment, elastic_strength=0.0)

    def compute_loss(self, model, batch_indices, generator, device):
        rows = draw_rows(self.train_idx, self.sample_weights, batch_indices, generator, self.epoch, self.num_samples)
        features = None if self.feature_masks is None else self.feature_masks[rows]
        turns = None if self.turns is None else self.turns[rows.numpy()]
        sources = None if self.sources is None else self.sources[rows]
        inputs, targets, target_masks, features = augment_with_features(self.images[rows], self.masks[rows], features,
                                                                         generator, self.epoch_augment(), turns, sources,
                                                                         device)
        bgr, mask_logits = model(inputs)
        total, _ = reconstruction_loss(bgr, mask_logits, targets, target_masks, self.loss_weights, features)
        if isinstance(model, AdversarialAutoencoder):
            # The face only (both masked alike): the background is never pasted, so it is not judged.
            scored = self.epoch >= self.adversarial.from_epoch
            matched = scored and self.adversarial.feature_matching > 0
            generator_loss, discriminator_loss, matching = adversarial_losses(
                model.discriminator, bgr * target_masks, targets * target_masks, feature_matching=matched)
            total = total + discriminator_loss
            if scored:
                total = total + self.adversarial.weight * generator_loss
            if matched:
                total = total + self.adversarial.feature_matching * matching
        return total

    def evaluate(self, model, device) -> dict[str, float]:
        if not len(self.held_idx):
            return {}
        return {"holdout_l1": holdout_l1(model, self.images[self.held_idx], self.masks[self.held_idx], device)}


def eyes_mouth_tensor(landmarks: np.ndarray | None, crop_size: int, size: int, weight: float) -> torch.Tensor | None:
    """The eyes-and-mouth masks [N, 1, size, size] a task's loss weighs, or None when the weight is 0."""
    if not weight:
        return None
    if landmarks is None:
        raise ValueError("an eyes-and-mouth loss weight needs the faces' crop-space landmarks")
    return masks_to_tensor(feature_masks(landmarks, crop_size, size))


@torch.no_grad()
def holdout_l1(model, images: torch.Tensor, masks: torch.Tensor, device) -> float:
    """Masked L1 of plain reconstructions (no augmentation), in [0, 1] pixel units."""
    model.eval()
    errors = []
    for start in range(0, len(images), 16):
        bgr, _ = model(images[start:start + 16].to(device))
        errors.append(masked_l1(bgr, images[start:start + 16].to(device), masks[start:start + 16].to(device)).item()
                      * len(bgr))
    return float(sum(errors) / len(images))


@torch.no_grad()
def reconstruction_preview(model: IdentityAutoencoder, images: torch.Tensor, indices: np.ndarray) -> np.ndarray:
    """Rows of input / reconstruction blended on the input through its predicted mask / that
    mask, for a few faces (BGR image); ``images`` are the task's model-size tensors."""
    tiles = []
    for i in indices:
        bgr, logits = model(images[i][None])
        crop, out = tensors_to_crops(images[i][None])[0], tensors_to_crops(bgr)[0]
        mask = (torch.sigmoid(logits)[0, 0].numpy() * 255).round().astype(np.uint8)
        tiles += [crop, blend(out, mask, crop), cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR)]
    return contact_sheet(tiles, columns=6, thumb=images.shape[-1])
