"""How much the swap export sharpens the face it paints.

A 96 px autoencoder paints softer faces than the ones it learnt from: kim's identity model at the
demo settings reconstructs her held-out faces with 0.35 of their variance of the Laplacian,
german_news's (a sharper video) with 0.51. The export gives its face the unsharp mask that
DeepFaceLab's merger and faceswap's converter apply when they paste (``models.swap.unsharp``),
by the amount that brings the identity model's reconstructions of the identity's held-out faces
back to the faces' own detail — measured on the identity, never on a target, so the export is
not fitted to the frames it is judged on, and a soft identity model is sharpened more than a
sharp one. Up to ``MAX_AMOUNT``: measured on the dev pairs (docs/swap_quality.md), twice that
made the swaps flicker more than their targets (german_news -> obama: temporal ratio 1.35) and
read less surely by FaceMesh (kim -> mead: pitch r 0.89 -> 0.77), with halos on the contact sheet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facepipe.evaluate import sharpness_ratio
from facepipe.faces import holdout_split, resize_crops
from facepipe.models.autoencoder import load_identity_model, model_config_of
from facepipe.models.swap import DfmSwapModel, swap_faces, unsharp

MAX_AMOUNT = 0.5


def sharpened(crops: np.ndarray, amount: float) -> np.ndarray:
    """uint8 BGR crops [N, S, S, 3] through ``unsharp`` (float64), rounded back to uint8."""
    images = torch.from_numpy(np.asarray(crops)).permute(0, 3, 1, 2).to(torch.float64) / 255.0
    return (unsharp(images, amount) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def matching_amount(reconstructions: np.ndarray, faces: np.ndarray, cap: float = MAX_AMOUNT, steps: int = 12) -> float:
    """The smallest unsharp amount in [0, ``cap``] at which the reconstructions' sharpness ratio
    to the faces (``evaluate.sharpness_ratio``, median over faces) reaches 1, found by bisection
    to ``cap`` / 2**``steps`` (the ratio grows with the amount); 0 when they are already as sharp,
    ``cap`` when even that leaves them softer."""
    def reaches(amount: float) -> bool:
        return sharpness_ratio(sharpened(reconstructions, amount), faces) >= 1.0

    if reaches(0.0):
        return 0.0
    if not reaches(cap):
        return float(cap)
    low, high = 0.0, float(cap)
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (low, middle) if reaches(middle) else (middle, high)
    return high


def identity_sharpening(identity_model: Path, crops: np.ndarray, holdout_every: int) -> tuple[float, float]:
    """(unsharp amount, sharpness ratio of the reconstructions before it) for the identity model
    saved in ``identity_model`` and the identity's aligned crops, measured on the faces it held
    out (``holdout_every``, as it was trained; all faces when it held none out)."""
    config = model_config_of(identity_model)
    model = DfmSwapModel.from_autoencoders(load_identity_model(identity_model / "model.safetensors", config))
    _, held = holdout_split(len(crops), holdout_every)
    faces = resize_crops(np.asarray(crops)[held if len(held) else slice(None)], config.size)
    reconstructions = swap_faces(model, faces, config.size).faces
    return matching_amount(reconstructions, faces), sharpness_ratio(reconstructions, faces)


def export_sharpening(identity_amount: float, swaps: np.ndarray, target_crops: np.ndarray) -> float:
    """The export's amount: the identity's (``identity_sharpening``), but no more than makes the
    unsharpened ``swaps`` of the target's training faces as sharp as those faces: a pasted face
    crisper than the footage around it looks as pasted as a blurred one (german_news -> obama,
    whose video is sharper than obama's: at the identity's amount the swaps read 1.07 of the
    targets' sharpness)."""
    return min(identity_amount, matching_amount(swaps, resize_crops(np.asarray(target_crops), swaps.shape[1]),
                                                cap=identity_amount))
