"""Training XSeg (occlusion-aware face segmentation) with the shared engine.

Labels are user masks or landmark hulls (facepipe.labels); during training synthetic occluders
are pasted over faces and cut out of the label (facepipe.occluders), because a hull alone can
never teach the model that a hand in front of the face is not face. The model is fully
convolutional: a CPU demo may train at 128 px while the export stays 256.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from facepipe.align import warp_to_crop
from facepipe.faces import holdout_split, resize_crops
from facepipe.models.xseg import (
    XSEG_SIZE,
    XSegUNet,
    crops_to_tensor,
    iou_per_sample,
    masks_to_tensor,
    mean_iou,
    predict_probabilities,
    xseg_loss,
)
from facepipe.occluders import augment_pair, occlude, rng_from_torch
from facepipe.preview import contact_sheet, outline
from facepipe.train.epochs import epoch_rows, epoch_size
from facepipe.train.task import TrainTask

# Seed of the fixed synthetic occluders on held-out faces: the "occluded" IoU is measured on the
# same occluded images every epoch and in every run.
HOLDOUT_OCCLUSION_SEED = 1234


def occluded_holdout(crops: np.ndarray, labels: np.ndarray, seed: int = HOLDOUT_OCCLUSION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The held-out faces with one fixed synthetic occluder each, and their cut labels."""
    rng = np.random.default_rng(seed)
    pairs = [occlude(crop, label, rng)[:2] for crop, label in zip(crops, labels)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class XSegTask(TrainTask):
    """Segment the visible face; held-out IoU (clean and synthetically occluded) as metrics."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray, train_idx, held_idx, width: int, depth: int,
                 resolution: int, samples_per_epoch: int = 0, occlusion_probability: float = 0.5,
                 max_samples_per_epoch: int = 0):
        self.crops, self.labels = crops, labels  # 256 px uint8, labels {0, 255}
        self.train_idx, self.held_idx = np.asarray(train_idx), np.asarray(held_idx)
        self.width, self.depth, self.resolution = width, depth, resolution
        self.occlusion_probability = occlusion_probability
        self.num_samples = epoch_size(len(self.train_idx), samples_per_epoch, max_samples_per_epoch)
        self.training_faces = len(self.train_idx)
        self.epoch = 0  # set by the engine (start_epoch)
        self.best_metric, self.best_mode = ("holdout_iou_occluded", "max") if len(self.held_idx) else ("loss", "min")
        held_crops, held_labels = crops[self.held_idx], labels[self.held_idx]
        occluded_crops, occluded_labels = occluded_holdout(held_crops, held_labels)
        self.holdout = {
            "clean": (resize_crops(held_crops, resolution), resize_crops(held_labels, resolution, interpolation="nearest")),
            "occluded": (resize_crops(occluded_crops, resolution), resize_crops(occluded_labels, resolution, interpolation="nearest")),
        }

    @classmethod
    def from_faces(cls, crops: np.ndarray, labels: np.ndarray, width: int, depth: int, resolution: int,
                   holdout_every: int = 10, samples_per_epoch: int = 0, occlusion_probability: float = 0.5,
                   max_samples_per_epoch: int = 0) -> XSegTask:
        """From stored crops [N, S, S, 3] and {0, 255} labels [N, S, S], brought to the export size (256)."""
        crops, labels = resize_crops(crops, XSEG_SIZE), resize_crops(labels, XSEG_SIZE, interpolation="nearest")
        train_idx, held_idx = holdout_split(len(crops), holdout_every)
        return cls(np.asarray(crops), np.asarray(labels), train_idx, held_idx, width, depth, resolution, samples_per_epoch,
                   occlusion_probability, max_samples_per_epoch)

    def build_model(self) -> XSegUNet:
        return XSegUNet(width=self.width, depth=self.depth)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def compute_loss(self, model, batch_indices, generator, device):
        rng = rng_from_torch(generator)
        images, targets = [], []
        for row in epoch_rows(torch.as_tensor(self.train_idx), batch_indices, self.epoch, self.num_samples).tolist():
            donor_row = self.train_idx[int(rng.integers(len(self.train_idx)))]
            crop, label = augment_pair(self.crops[row], self.labels[row], rng,
                                       donor=(self.crops[donor_row], self.labels[donor_row]),
                                       occlusion_probability=self.occlusion_probability)
            images.append(crop)
            targets.append(label)
        images = resize_crops(np.stack(images), self.resolution)
        targets = resize_crops(np.stack(targets), self.resolution, interpolation="nearest")
        return xseg_loss(model(crops_to_tensor(images).to(device)), masks_to_tensor(targets).to(device))

    def evaluate(self, model, device) -> dict[str, float]:
        if not len(self.held_idx):
            return {}
        return {f"holdout_iou_{name}": mean_iou(predict_probabilities(model, crops, device=device) > 0.5, labels > 127)
                for name, (crops, labels) in self.holdout.items()}


def xseg_preview(crops: np.ndarray, labels: np.ndarray, predicted: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Columns: image, label (outlined), prediction (outlined), for a few faces."""
    tiles = []
    for i in rows:
        tiles += [crops[i], outline(crops[i], labels[i]), outline(crops[i], predicted[i], (0, 0, 255))]
    return contact_sheet(tiles, columns=6, thumb=128)


def occluder_truth_iou(index: pd.DataFrame, hulls: np.ndarray, predicted: np.ndarray,
                       occluders: dict[str, np.ndarray], min_occlusion: float = 0.02) -> dict[str, float]:
    """IoU against known occluders (the sample generator's ground truth) on occluded faces.

    The true visible face of a crop is its landmark hull minus the occluder warped into the crop
    with the face's own alignment matrix. Returns the hull's IoU (which ignores occluders) and
    the model's, over faces whose occluder hides at least `min_occlusion` of the hull.
    """
    hull_scores, model_scores = [], []
    for row, hull, mask in zip(index.itertuples(), hulls, predicted):
        frames = occluders.get(row.source)
        if frames is None:
            continue
        matrix = np.array([getattr(row, f"m{i}") for i in range(6)], dtype=np.float64).reshape(2, 3)
        occluder = warp_to_crop(frames[row.source_frame_index].astype(np.uint8), matrix, hull.shape[0], nearest=True) > 0
        face = hull > 127
        if (occluder & face).sum() < min_occlusion * face.sum():
            continue
        truth = face & ~occluder
        hull_scores.append(iou_per_sample(face[None], truth[None])[0])
        model_scores.append(iou_per_sample((mask > 127)[None], truth[None])[0])
    return {"occluded_faces": len(hull_scores), "hull_iou": float(np.mean(hull_scores)) if hull_scores else float("nan"),
            "model_iou": float(np.mean(model_scores)) if model_scores else float("nan")}
