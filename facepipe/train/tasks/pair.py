"""Training the pair adapter: LoRA on the frozen identity model (facepipe.models.pair), with the
shared engine. Each batch mixes target faces through the target path with identity faces replayed
through the identity path (see the model's docstring for the wiring)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from facepipe.faces import holdout_split, resize_crops
from facepipe.models.augment import AugmentConfig, augment_with_features, faces_to_tensors, stored_faces
from facepipe.models.autoencoder import IdentityAutoencoder, model_config_of
from facepipe.models.losses import LossWeights, masked_l1, reconstruction_loss
from facepipe.models.pair import AdapterConfig, PairModel, adapter_state
from facepipe.models.turn import crops_mesh, turn_table
from facepipe.train.epochs import epoch_rows, epoch_size
from facepipe.train.task import TrainTask
from facepipe.train.tasks.reconstruction import eyes_mouth_tensor


def check_masks(masks: np.ndarray, what: str) -> None:
    """Masks are uint8 0..255 (hull {0, 255}, XSeg soft); a {0, 1} mask would weigh ~nothing."""
    masks = np.asarray(masks)
    if masks.dtype != np.uint8:
        raise ValueError(f"{what} masks must be uint8 in 0..255, got {masks.dtype}")
    if masks.size and int(masks.max()) == 1:
        raise ValueError(f"{what} masks hold only 0/1; scale them to 0..255 (e.g. masks * 255)")


class PairTask(TrainTask):
    """Each batch: target faces through the target path, as many identity faces (drawn from the
    augmentation generator) through the identity path; same homography on input and target of
    every face. Loss = target loss + identity_replay_weight · identity loss, each the
    reconstruction loss masked by that face's mask. Metrics: held-out masked L1 of both paths."""

    def __init__(
        self,
        identity_model: Path,
        identity_images: torch.Tensor,
        identity_masks: torch.Tensor,
        target_images: torch.Tensor,
        target_masks: torch.Tensor,
        holdout_every: int = 10,
        samples_per_epoch: int = 0,
        adapter: AdapterConfig = AdapterConfig(),
        augment: AugmentConfig = AugmentConfig(),
        identity_features: torch.Tensor | None = None,
        target_features: torch.Tensor | None = None,
        identity_points: np.ndarray | None = None,
        identity_sources: torch.Tensor | None = None,
        target_sources: torch.Tensor | None = None,
        max_samples_per_epoch: int = 0,
    ):
        # *_features [N, 1, S, S]: the eyes and mouth, scored by adapter.eyes_mouth_weight.
        # identity_points [N, 478, 3]: FaceMesh points with depth at the model size, for the identity
        # replay's head turns (augment.turn; the target's faces are never turned), solved once.
        self.identity_points = identity_points
        # *_sources [N, 3, S0, S0] uint8: the faces as stored, for inputs cut as the runtimes cut them.
        self.identity_sources, self.target_sources = identity_sources, target_sources
        self.identity_turns = None if identity_points is None else turn_table(identity_points, augment.turn_deg,
                                                                               identity_images.shape[-1])
        self.identity_features, self.target_features = identity_features, target_features
        self.loss_weights = LossWeights(eyes_mouth=adapter.eyes_mouth_weight)
        self.identity_model = Path(identity_model)  # the identity model's saved folder (weights + config)
        self.adapter, self.augment = adapter, augment
        self.identity_images, self.identity_masks = identity_images, identity_masks
        self.target_images, self.target_masks = target_images, target_masks
        identity_train, identity_held = holdout_split(len(identity_images), holdout_every)
        target_train, target_held = holdout_split(len(target_images), holdout_every)
        self.identity_train = torch.as_tensor(identity_train, dtype=torch.long)
        self.identity_held = torch.as_tensor(identity_held, dtype=torch.long)
        self.target_train = torch.as_tensor(target_train, dtype=torch.long)
        self.target_held = torch.as_tensor(target_held, dtype=torch.long)
        if not len(self.identity_train) or not len(self.target_train):
            raise ValueError(
                f"PairTask needs identity and target faces to train on, got {len(identity_images)} identity and "
                f"{len(target_images)} target faces"
            )
        # An epoch is a pass over the target faces, within bounds (facepipe.train.epochs).
        self.num_samples = epoch_size(len(self.target_train), samples_per_epoch, max_samples_per_epoch)
        self.training_faces = len(self.target_train)
        self.epoch = 0  # set by the engine (start_epoch)
        self.best_metric = "holdout_target_l1" if len(self.target_held) else "loss"

    @classmethod
    def from_faces(
        cls,
        identity_model: Path,
        identity_crops: np.ndarray,
        identity_masks: np.ndarray,
        target_crops: np.ndarray,
        target_masks: np.ndarray,
        holdout_every: int = 10,
        samples_per_epoch: int = 0,
        adapter: AdapterConfig = AdapterConfig(),
        augment: AugmentConfig = AugmentConfig(),
        identity_landmarks: np.ndarray | None = None,
        target_landmarks: np.ndarray | None = None,
        max_samples_per_epoch: int = 0,
    ) -> PairTask:
        """From stored crops [N, S0, S0, 3] BGR uint8 aligned to dfl_whole_face and masks
        [N, S0, S0] uint8 0..255 (identity: hull masks; target: target_masks, e.g. XSeg),
        resized once to the identity model's size; with ``adapter.eyes_mouth_weight`` > 0 the
        crop-space landmarks [N, 478, 2] of both give the eyes-and-mouth masks; with
        ``augment.runtime_crop`` > 0 the stored crops are kept too, to cut inputs from as the runtimes do."""
        check_masks(identity_masks, "identity")
        check_masks(target_masks, "target")
        size, weight = model_config_of(identity_model).size, adapter.eyes_mouth_weight
        points = crops_mesh(identity_crops, size) if augment.turn > 0 else None
        keep = augment.runtime_crop > 0
        return cls(identity_model, *faces_to_tensors(resize_crops(identity_crops, size), resize_crops(identity_masks, size)),
                   *faces_to_tensors(resize_crops(target_crops, size), resize_crops(target_masks, size)),
                   holdout_every, samples_per_epoch, adapter, augment,
                   eyes_mouth_tensor(identity_landmarks, identity_crops.shape[1], size, weight),
                   eyes_mouth_tensor(target_landmarks, target_crops.shape[1], size, weight), points,
                   stored_faces(identity_crops) if keep else None, stored_faces(target_crops) if keep else None,
                   max_samples_per_epoch)

    def build_model(self) -> PairModel:
        return PairModel(IdentityAutoencoder.from_folder(self.identity_model), self.adapter)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def compute_loss(self, model, batch_indices, generator, device):
        target_rows = epoch_rows(self.target_train, batch_indices, self.epoch, self.num_samples)
        # Drawn from the engine's generator: every target face meets varying identity faces, and
        # the draw is checkpointed with the generator, so resume stays exact.
        identity_rows = self.identity_train[
            torch.randint(len(self.identity_train), (len(batch_indices),), generator=generator)
        ]
        target_in, target_out, target_mask, target_features = augment_with_features(
            self.target_images[target_rows], self.target_masks[target_rows], rows_of(self.target_features, target_rows),
            generator, self.augment, sources=rows_of(self.target_sources, target_rows), device=device
        )
        identity_in, identity_out, identity_mask, identity_features = augment_with_features(
            self.identity_images[identity_rows], self.identity_masks[identity_rows],
            rows_of(self.identity_features, identity_rows), generator, self.augment,
            None if self.identity_turns is None else self.identity_turns[identity_rows.numpy()],
            rows_of(self.identity_sources, identity_rows), device
        )
        # One encoder pass for both: no normalisation layers, so a face's code does not depend
        # on its batch neighbours.
        codes = model.encode(torch.cat([target_in, identity_in]))
        target_code, identity_code = codes.split([len(target_rows), len(identity_rows)])
        target_bgr, target_logits = model.target_decode(target_code)
        identity_bgr, identity_logits = model.identity_decode(identity_code)
        target_loss, _ = reconstruction_loss(target_bgr, target_logits, target_out, target_mask, self.loss_weights,
                                             target_features)
        identity_loss, _ = reconstruction_loss(identity_bgr, identity_logits, identity_out, identity_mask,
                                               self.loss_weights, identity_features)
        return target_loss + self.adapter.identity_replay_weight * identity_loss

    def evaluate(self, model, device) -> dict[str, float]:
        metrics = {}
        if len(self.target_held):
            metrics["holdout_target_l1"] = path_l1(
                model, model.target_decode, self.target_images[self.target_held], self.target_masks[self.target_held], device
            )
        if len(self.identity_held):
            metrics["holdout_identity_l1"] = path_l1(
                model,
                model.identity_decode,
                self.identity_images[self.identity_held],
                self.identity_masks[self.identity_held],
                device,
            )
        return metrics

    def weights_to_save(self, model: PairModel) -> dict[str, torch.Tensor]:
        # The LoRA tensors and the swap latent offset (zero while training; pose_follow's tensors are
        # set after training only).
        return adapter_state(model)


def rows_of(tensor: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor[rows]


@torch.no_grad()
def path_l1(model: PairModel, decode: Callable, images: torch.Tensor, masks: torch.Tensor, device) -> float:
    """Masked L1 of plain reconstructions (no augmentation) through encode → ``decode``."""
    model.eval()
    total = 0.0
    for start in range(0, len(images), 16):
        batch, batch_masks = images[start:start + 16].to(device), masks[start:start + 16].to(device)
        bgr, _ = decode(model.encode(batch))
        total += masked_l1(bgr, batch, batch_masks).item() * len(batch)
    return float(total / len(images))
