"""How much the swap export sharpens the face it paints.

A 96 px autoencoder paints softer faces than the ones it learnt from (kim's identity model at the
demo settings reconstructs her held-out faces with 0.35 of their variance of the Laplacian,
german_news's, a sharper video, with 0.51), and a soft face is what users see first. The export
gives its face the unsharp mask that DeepFaceLab's merger and faceswap's converter apply when they
paste (``models.swap.unsharp``), by the amount that makes the swaps of the target's training faces,
fed as FaceFusion's deep_swapper feeds them (``facefusion_fed``), as sharp as those faces cut as the
runtimes cut them (``runtime_cut``: straight to the model's size, bilinear, as both warp a frame):
what the runtime pastes back is then as sharp as the target's own face would look through a model
of this size, the most a face of this size can show once enlarged into the frame (on obama_early ->
vox pasted back: 0.17 of the target's sharpness with the amount matched to the anti-aliased
training crops, 0.26 at 1.5, the target's own crop 0.28; docs/swap_quality.md, "The pasted face as
the rule"). The target's held-out faces, which judge the export, are not used. Up to
``MAX_AMOUNT``: beyond it the mask amplifies the model's pixel-level texture into grain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facepipe.evaluate import facefusion_sharpen, sharpness_ratio
from facepipe.faces import holdout_split, resize_crops
from facepipe.models.augment import tensors_to_crops
from facepipe.models.autoencoder import load_identity_model, model_config_of
from facepipe.models.swap import DfmSwapModel, swap_faces, unsharp

MAX_AMOUNT = 2.0


def sharpened(crops: np.ndarray, amount: float) -> np.ndarray:
    """uint8 BGR crops [N, S, S, 3] through ``unsharp`` (float64), rounded back to uint8."""
    images = torch.from_numpy(np.asarray(crops)).permute(0, 3, 1, 2).to(torch.float64) / 255.0
    return tensors_to_crops(unsharp(images, amount))


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


def identity_softness(identity_model: Path, crops: np.ndarray, holdout_every: int) -> float:
    """The sharpness ratio of the reconstructions of the identity's held-out faces (``holdout_every``,
    as the identity model was trained; all faces when it held none out) to those faces: how much
    detail the identity model itself loses (reported beside the export's amount)."""
    config = model_config_of(identity_model)
    model = DfmSwapModel.from_autoencoders(load_identity_model(identity_model / "model.safetensors", config))
    _, held = holdout_split(len(crops), holdout_every)
    faces = resize_crops(np.asarray(crops)[held if len(held) else slice(None)], config.size)
    return sharpness_ratio(swap_faces(model, faces, config.size).faces, faces)


def facefusion_fed(crops: np.ndarray, size: int) -> np.ndarray:
    """Aligned crops as FaceFusion's deep_swapper feeds a DFM model of ``size``: at that size,
    sharpened (``evaluate.facefusion_sharpen``)."""
    return np.stack([facefusion_sharpen(crop) for crop in resize_crops(crops, size)])


def runtime_cut(crops: np.ndarray, size: int) -> np.ndarray:
    """Aligned crops brought to ``size`` as FaceFusion and DeepFaceLive cut a face: bilinear, without
    the anti-aliasing of the training crops' shrink (both warp the frame with cv2.warpAffine's linear
    filter), so 2-4x the variance of the Laplacian of the shrunk crops."""
    return resize_crops(crops, size, interpolation="linear")


def export_sharpening(swaps: np.ndarray, target_crops: np.ndarray) -> float:
    """The export's amount: the smallest that makes the unsharpened ``swaps`` of the target's
    training faces (fed as ``facefusion_fed`` feeds them) as sharp as those faces cut as the runtimes
    cut them (``runtime_cut``, at the swaps' size), up to ``MAX_AMOUNT``."""
    swaps = np.asarray(swaps)
    return matching_amount(swaps, runtime_cut(target_crops, swaps.shape[1]))
