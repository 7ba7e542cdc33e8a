"""Reconstruction loss of the face autoencoders: masked L1 + masked DSSIM + mask BCE.

    total = L1_WEIGHT · masked L1 + DSSIM_WEIGHT · masked DSSIM + MASK_WEIGHT · BCE(mask logits)
            [+ EYES_MOUTH_WEIGHT · L1 over the eyes and mouth]

Weights (``LossWeights``): L1 and DSSIM count equally, as DeepFaceLab weighs its pixel and
structure terms (10 : 10 there; the common factor only rescales the learning rate). L1 keeps
colours right, DSSIM keeps edges and texture (L1 alone gives blurry faces). The mask term has
weight 1: its BCE is ~0.7 untrained and falls under 0.1 once the silhouette is learnt, so it
never dominates the image terms once training is underway.

Image terms count only the face: pixels are weighted by the target mask (the landmark hull,
warped with the target), because the background of a crop is not the identity's and the swap
is pasted through the mask anyway. The mask is supervised everywhere.

The eyes-and-mouth term (DeepFaceLab's eyes_mouth_prio; ``eyes_mouth`` > 0 and a feature mask given,
facepipe.faces.feature_masks) is an L1 normalised over those regions alone: they cover ~8 % of the
crop, so at weight 1 each of their pixels counts ~7x a face pixel. Expression is read from a few
pixels there (a blink, a parted lip), which a face-wide average loss rounds away.

The mask head outputs logits and this module applies the one sigmoid, inside
``binary_cross_entropy_with_logits`` (numerically stable, and never a second sigmoid).
Everything is computed in float32, also under autocast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11  # the standard SSIM window (Wang et al. 2004): 11 px, sigma 1.5
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2  # stabilisers for a data range of 1
SSIM_C2 = 0.03**2


@dataclass(frozen=True)
class LossWeights:
    l1: float = 1.0
    dssim: float = 1.0
    mask: float = 1.0
    eyes_mouth: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    """[size] normalised 1-D Gaussian, float64, centred on the middle tap."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(coords**2) / (2 * sigma**2))
    return profile / profile.sum()


def separable_blur(image: torch.Tensor, taps: torch.Tensor, padding: str = "valid") -> torch.Tensor:
    """[N, C, H, W] blurred by the 1-D ``taps`` along rows, then columns, each channel on its own
    (2·w multiplies a pixel instead of w² for a w×w window). ``padding``: "valid" (the output
    shrinks by w − 1 a side), "zeros" or "replicate" (the same size; zeros or the border pixels
    repeated outside the image)."""
    if padding not in ("valid", "zeros", "replicate"):
        raise ValueError(f"separable_blur padding must be 'valid', 'zeros' or 'replicate', got {padding!r}")
    # The channel count as a constant: traced into an export, the kernel must have a known shape.
    radius, channels = (len(taps) - 1) // 2, int(image.shape[1])
    if padding == "replicate":
        image = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    pad = radius if padding == "zeros" else 0
    taps = taps.to(image)
    image = F.conv2d(image, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), padding=(0, pad), groups=channels)
    return F.conv2d(image, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), padding=(pad, 0), groups=channels)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-pixel SSIM [N, C, H-w+1, W-w+1] of images in [0, 1] (gaussian window, valid region,
    each channel on its own)."""
    channels = x.shape[1]
    x, y = x.float(), y.float()
    # The local statistics blurred in two calls (stacked on the channels): the window is
    # separable, and a small convolution over several channels is cheaper than one per statistic
    # in a training step. Those of x (the model's output, carrying gradients) apart from those of y
    # alone (the target, none), so the backward pass blurs 9 channels instead of 15: the loss and
    # its gradient are the same to the bit, the SSIM term 14 -> 10.5 ms of a 2-core step at 96 px.
    # In float32 also under autocast (which runs convolutions in fp16): a variance is the
    # difference of two nearly equal means, which fp16 cancels to noise or below zero, and the
    # denominator's gradient then overflows to NaN on every step (the CUDA preset stopped learning).
    # Blurred in channels-last layout: there oneDNN's depthwise convolution runs 4-10x faster than
    # in the plain one (96 px, 6-9 channels, 2 cores) and sums the same taps in the same order, so
    # the loss and its gradient are the same to the bit (on the CPU the model's output comes in that
    # layout; the target's statistics did not: ~2 % of the adapter's step on real faces).
    taps, layout = gaussian_taps(window_size, sigma), torch.channels_last
    with torch.autocast(x.device.type, enabled=False):
        of_x = separable_blur(torch.cat([x, x * x, x * y], dim=1).contiguous(memory_format=layout), taps)
        of_y = separable_blur(torch.cat([y, y * y], dim=1).contiguous(memory_format=layout), taps)
    mu_x, mean_xx, mean_xy = of_x.split(channels, dim=1)
    mu_y, mean_yy = of_y.split(channels, dim=1)
    var_x = mean_xx - mu_x * mu_x
    var_y = mean_yy - mu_y * mu_y
    cov = mean_xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return numerator / denominator


def dssim(x: torch.Tensor, y: torch.Tensor, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Structural dissimilarity (1 - mean SSIM) / 2, in [0, 1]; 0 for identical images."""
    return (1.0 - ssim_map(x, y, window_size, sigma).mean()) / 2.0


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the mask's weight (per pixel and channel), so the loss does not
    shrink with the face's share of the crop. An empty mask gives 0, not NaN."""
    weight = mask.expand_as(pred)
    return ((pred - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)


def reconstruction_loss(
    pred_bgr: torch.Tensor,
    mask_logits: torch.Tensor,
    target_bgr: torch.Tensor,
    target_mask: torch.Tensor,
    weights: LossWeights = LossWeights(),
    feature_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted loss and its detached parts {"l1", "dssim", "mask", "total"}.

    pred_bgr [N, 3, S, S] in [0, 1] (after the model's sigmoid), mask_logits [N, 1, S, S] raw
    logits, target_bgr [N, 3, S, S] in [0, 1], target_mask [N, 1, S, S] in [0, 1] (soft after
    warping is fine: BCE takes soft targets); feature_mask [N, 1, S, S] in [0, 1], the eyes and
    mouth warped like target_mask, scored when ``weights.eyes_mouth`` > 0 (part "eyes_mouth").
    """
    if mask_logits.shape != target_mask.shape or pred_bgr.shape != target_bgr.shape:
        raise ValueError(
            f"reconstruction_loss shape mismatch: pred {list(pred_bgr.shape)} vs target {list(target_bgr.shape)}, "
            f"mask logits {list(mask_logits.shape)} vs target mask {list(target_mask.shape)}"
        )
    pred_bgr, target_bgr = pred_bgr.float(), target_bgr.float()
    mask_logits, target_mask = mask_logits.float(), target_mask.float()
    l1 = masked_l1(pred_bgr, target_bgr, target_mask)
    # Masking both images before SSIM (as DeepFaceLab does) scores only the face's structure;
    # the background becomes flat zero in both and contributes perfect similarity.
    structure = dssim(pred_bgr * target_mask, target_bgr * target_mask)
    mask = F.binary_cross_entropy_with_logits(mask_logits, target_mask)
    total = weights.l1 * l1 + weights.dssim * structure + weights.mask * mask
    parts = {"l1": l1.detach(), "dssim": structure.detach(), "mask": mask.detach()}
    if weights.eyes_mouth and feature_mask is not None:
        features = masked_l1(pred_bgr, target_bgr, feature_mask.float())
        total = total + weights.eyes_mouth * features
        parts["eyes_mouth"] = features.detach()
    parts["total"] = total.detach()
    return total, parts
