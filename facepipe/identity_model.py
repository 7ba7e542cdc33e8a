"""Training the per-identity autoencoder with the shared engine (no Dagster here).

The model reconstructs the identity's aligned faces: the same random homography on input and
target (so it learns to follow pose), an elastic warp on the input only (so it cannot copy
pixels), masked L1 + DSSIM + mask loss. A fixed share of faces is held out to measure
reconstruction error against the untrained model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from facepipe.models.augment import AugmentConfig, augment_batch, faces_to_tensors, resize_faces
from facepipe.models.autoencoder import AutoencoderConfig, IdentityAutoencoder
from facepipe.models.losses import masked_l1, reconstruction_loss
from facepipe.faces import holdout_split
from facepipe.preview import contact_sheet
from facepipe.train import TrainConfig, TrainResult, TrainTask, train


class ReconstructionTask(TrainTask):
    """Reconstruct aligned faces through the autoencoder; held-out masked L1 as the metric."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, train_idx, held_idx, model_config: AutoencoderConfig,
                 samples_per_epoch: int = 0, augment: AugmentConfig = AugmentConfig()):
        self.images, self.masks = images, masks
        self.train_idx = torch.as_tensor(train_idx, dtype=torch.long)
        self.held_idx = torch.as_tensor(held_idx, dtype=torch.long)
        # Small sets are repeated within an epoch (each repeat augmented differently), so an
        # epoch is a useful amount of training whatever the number of faces.
        self.num_samples = max(len(self.train_idx), samples_per_epoch)
        self.best_metric = "holdout_l1" if len(self.held_idx) else "loss"
        self.model_config, self.augment = model_config, augment

    def build_model(self) -> IdentityAutoencoder:
        return IdentityAutoencoder(self.model_config)

    def compute_loss(self, model, batch_indices, generator, device):
        rows = self.train_idx[batch_indices % len(self.train_idx)]
        inputs, targets, target_masks = augment_batch(self.images[rows], self.masks[rows], generator, self.augment)
        bgr, mask_logits = model(inputs.to(device))
        total, _ = reconstruction_loss(bgr, mask_logits, targets.to(device), target_masks.to(device))
        return total

    def evaluate(self, model, device) -> dict[str, float]:
        if not len(self.held_idx):
            return {}
        return {"holdout_l1": holdout_l1(model, self.images[self.held_idx], self.masks[self.held_idx], device)}


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


@dataclass
class IdentityTraining:
    result: TrainResult
    model: IdentityAutoencoder
    task: ReconstructionTask
    untrained_holdout_l1: float
    crops: np.ndarray  # the resized uint8 BGR crops the model saw


def train_identity_model(
    crops: np.ndarray,
    masks: np.ndarray,
    model_config: AutoencoderConfig,
    train_config: TrainConfig,
    run_dir: Path,
    holdout_every: int = 10,
    samples_per_epoch: int = 0,
    log: Callable[[str], None] = print,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> IdentityTraining:
    """Train (or resume) on aligned crops [N,S0,S0,3] BGR + hull masks; returns the trained model."""
    small_crops, small_masks = resize_faces(crops, masks, model_config.size)
    images, mask_tensor = faces_to_tensors(small_crops, small_masks)
    train_idx, held_idx = holdout_split(len(images), holdout_every)
    task = ReconstructionTask(images, mask_tensor, train_idx, held_idx, model_config, samples_per_epoch)
    torch.manual_seed(train_config.seed)  # the engine seeds the same way before build_model
    untrained = holdout_l1(task.build_model(), images[held_idx], mask_tensor[held_idx], "cpu") if len(held_idx) else float("nan")
    result = train(task, train_config, run_dir, log=log, on_checkpoint=on_checkpoint)
    model = task.build_model()
    model.load_state_dict(load_weights(result.weights_path))
    model.eval()
    return IdentityTraining(result, model, task, untrained, small_crops)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@torch.no_grad()
def reconstruction_preview(model: IdentityAutoencoder, crops: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Rows of input / reconstruction / predicted mask for a few faces (BGR image)."""
    tiles = []
    for i in indices:
        image = torch.from_numpy(np.ascontiguousarray(crops[i])).permute(2, 0, 1)[None].float() / 255
        bgr, logits = model(image)
        out = (bgr[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        mask = (torch.sigmoid(logits)[0, 0].numpy() * 255).round().astype(np.uint8)
        tiles += [crops[i], out, cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR)]
    return contact_sheet(tiles, columns=6, thumb=crops.shape[1])
