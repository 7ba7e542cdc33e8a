"""Balanced sampling of a face set: rare poses and expressions drawn more often.

A talking-head video is lopsided: nearly every frame is frontal with open eyes and a half-closed
mouth; a blink is a handful of frames (on the german_news dev video 5 of 500 faces have their
eyes closed), a wide mouth or a turned head a few dozen. Drawn uniformly, the identity model
sees a blink once in a hundred faces and learns to paint open eyes, so its swaps never blink,
whatever the target does. DeepFaceLab users balance such sets by hand; here each face gets a
weight from how rare its measures are (``expression_measures``: mouth, each eye, yaw, pitch)
and the training draws faces in proportion to it, from the engine's generator (so a resumed run
draws the same faces). Nothing is dropped: a common face is drawn a little less often.
"""

from __future__ import annotations

import numpy as np
import torch

from facepipe.train.epochs import epoch_rows

BINS = 8  # per measure, equal width over its whole range: a blink is the tail, it must get a bin of its own
MAX_WEIGHT = 10.0  # a face is drawn at most this many times as often as the most common ones


def expression_measures(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """[N, 5] float64 (mouth opening, left and right eye opening, yaw, pitch in degrees) from
    crop-space landmarks [N, 478, 2] of crops ``crop_size`` px wide, as facepipe.evaluate defines them."""
    from facepipe.evaluate import eye_openings, head_pose, mouth_opening  # evaluate imports MediaPipe

    pose = head_pose(landmarks, crop_size)
    return np.nan_to_num(np.column_stack([mouth_opening(landmarks), eye_openings(landmarks), pose[:, :2]]))


def rarity_weights(measures: np.ndarray, power: float) -> torch.Tensor:
    """[N] float64 sampling weights from measures [N, K]: for each measure, the share of faces a bin
    would hold if they were spread evenly over the bins, over the share its bin holds; a face's
    rarity is its rarest measure's, and its weight that rarity to ``power`` (0: uniform, 0.5: the
    square root), between 1 and MAX_WEIGHT."""
    measures = np.asarray(measures, dtype=np.float64)
    rarity = np.ones(len(measures))
    if power > 0 and len(measures):
        for column in measures.T:
            low, high = column.min(), column.max()
            if high <= low:
                continue  # a measure that does not vary cannot be lopsided
            bins = np.clip(((column - low) / (high - low) * BINS).astype(int), 0, BINS - 1)
            counts = np.bincount(bins, minlength=BINS)
            rarity = np.maximum(rarity, (len(column) / BINS) / counts[bins])
    return torch.from_numpy(np.clip(rarity ** power, 1.0, MAX_WEIGHT))


def draw_rows(rows: torch.Tensor, weights: torch.Tensor | None, batch_indices: torch.Tensor,
              generator: torch.Generator, epoch: int, epoch_size: int) -> torch.Tensor:
    """The face rows of one batch: when unweighted, those at the engine's positions
    (``batch_indices``) of epoch ``epoch`` (facepipe.train.epochs), else as many rows drawn with
    replacement in proportion to ``weights`` from ``generator``."""
    if weights is None:
        return epoch_rows(rows, batch_indices, epoch, epoch_size)
    return rows[torch.multinomial(weights, len(batch_indices), replacement=True, generator=generator)]
