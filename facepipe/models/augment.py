"""Training augmentation for the face autoencoders, seeded by a torch.Generator.

Measured in the prototype (DESIGN.md, Models): warping input *and* target with the same random
homography (rotation, scale, shift, mild perspective) was the largest single gain in following
the target's pose, so that warp goes to the input, the target image and the target mask alike.
An elastic warp on the input only (DeepFaceLab's "random warp") makes the model reconstruct
a clean face from a distorted one instead of copying pixels through. Colour jitter, when
enabled, is applied identically to input and target so the model learns to follow the light.
FaceFusion's deep_swapper sharpens the crop before the model (1.75·crop − 0.75·GaussianBlur,
σ 2) and DeepFaceLive does not, so a share of the inputs (``sharpen``) is sharpened that way
while the target stays as it is, so that the model sees either runtime's input. (Measured on
german_news -> obama: the swap differs by under one grey level between the two feedings with or
without it; eye following was lower in both sharpened runs: docs/swap_quality.md.)

All randomness is drawn on the CPU from the given generator (the training engine seeds and
checkpoints it) and only then moved to the images' device, so a batch's augmentation does not
depend on the device. Warps use ``grid_sample`` (bilinear, align_corners=False), deterministic
on the CPU.

Coordinates are ``grid_sample``'s normalised ones: x, y in [-1, 1] across the crop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from facepipe.models import turn


@dataclass(frozen=True)
class AugmentConfig:
    """Magnitudes of the training augmentation; 0 switches a part off."""

    rotation_deg: float = 10.0  # uniform in ±rotation_deg
    scale: float = 0.05  # log-uniform in [1/(1+scale), 1+scale]
    shift: float = 0.05  # uniform in ±shift of the crop size, per axis
    perspective: float = 0.04  # projective terms, uniform in ±perspective (normalised units)
    elastic_strength: float = 0.05  # std of control-point displacement, normalised units
    elastic_cells: int = 5  # control points per side (the border ones stay fixed)
    # Colour jitter, identical on input and target. Measured on a real cross-person pair
    # (german_news -> obama, CPU defaults, 30 held-out frames): an identity model that has seen its
    # face under varied light and skin tone reads another person's face as less foreign, and the
    # swap follows it better (yaw correlation 0.02 -> 0.64, eyes -0.17 -> 0.52, pitch 0.90 both).
    brightness: float = 0.1  # additive, uniform in ±brightness
    contrast: float = 0.2  # multiplicative around the image mean, uniform in ±contrast
    channel_gain: float = 0.1  # per-channel multiplicative, uniform in ±channel_gain
    # Share of inputs sharpened as FaceFusion feeds them (see the module docstring). Off by default:
    # measured, the swap answers both runtimes' inputs alike without it (under one grey level apart)
    # and eye following was lower in both sharpened runs.
    sharpen: float = 0.0
    # Share of faces mirrored left-right (input, target and masks alike; the crops are aligned on a
    # symmetric template, so a mirrored crop is still aligned). An identity filmed turning one way
    # teaches the model the other way too (DeepFaceLab's random_flip), at the price of averaging
    # the face's asymmetries (a parting, a mole) with their mirror image.
    flip: float = 0.0
    # Share of faces turned in 3D by up to ``turn_deg`` either way (facepipe.models.turn; input, target
    # and masks alike): poses the identity's media do not show, so the swap can follow a target that
    # turns further. Needs each face's FaceMesh points with depth (``points`` of ``augment_batch``).
    turn: float = 0.0
    turn_deg: float = 15.0
    # Share of inputs cut as the runtimes cut them: read straight from the stored crop (256 px) at
    # the model's size with bilinear sampling and no anti-aliasing, as FaceFusion and DeepFaceLive
    # warp a frame to the model (input only; the target stays the crop shrunk with INTER_AREA).
    # Needs the stored crops (``sources`` of ``augment_batch``). Runtime crops are 2.5-4x as sharp
    # (variance of the Laplacian) as the shrunk ones the encoder otherwise learns from; taught on
    # them, the encoder followed another person's face worse (docs/swap_quality.md, "The crop the model is fed").
    runtime_crop: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Model-size crops → tensors (facepipe.faces.resize_crops brings stored crops to the model size)


def faces_to_tensors(crops: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 crops [N, S, S, 3] BGR and masks [N, S, S] {0..255} → float32 NCHW in [0, 1]:
    images [N, 3, S, S] (still BGR) and masks [N, 1, S, S]."""
    images = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    return images.contiguous(), masks_to_tensor(masks)


def tensors_to_crops(images: torch.Tensor) -> np.ndarray:
    """float NCHW BGR images [N, 3, S, S] in [0, 1] → uint8 crops [N, S, S, 3], rounded and clipped:
    ``faces_to_tensors``' way back, to read a painted face as a stored crop is read."""
    return (images.permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


def stored_faces(crops: np.ndarray) -> torch.Tensor:
    """uint8 crops [N, S0, S0, 3] BGR as stored → uint8 [N, 3, S0, S0], the ``sources`` the runtime
    crop is cut from (kept in 8 bits: a quarter of the memory of floats at four times the pixels)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(crops).transpose(0, 3, 1, 2)))  # a copy: writable


def masks_to_tensor(masks: np.ndarray) -> torch.Tensor:
    """uint8 masks [N, S, S] {0..255} → float32 [N, 1, S, S] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(masks)).unsqueeze(1).float().div_(255.0)


# ---------------------------------------------------------------------------------------------
# Homography shared by input, target and mask


def _uniform(generator: torch.Generator, batch: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(batch, generator=generator, dtype=torch.float64) * (high - low) + low


def random_homography(
    generator: torch.Generator,
    batch: int,
    rotation_deg: float = AugmentConfig.rotation_deg,
    scale: float = AugmentConfig.scale,
    shift: float = AugmentConfig.shift,
    perspective: float = AugmentConfig.perspective,
) -> torch.Tensor:
    """[batch, 3, 3] float32 sampling homographies on the CPU.

    Each matrix maps a point of the warped image (normalised coordinates) to the point of the
    source image it samples: [x_src, y_src, w] = H @ [x, y, 1]. Rotation about the crop centre,
    isotropic scale, shift (a fraction of the crop size) and two projective terms, which tilt
    the face plane like a small yaw/pitch change. All-zero magnitudes give the identity.
    """
    angle = _uniform(generator, batch, -rotation_deg, rotation_deg) * (math.pi / 180.0)
    log_scale = math.log1p(scale)
    zoom = torch.exp(_uniform(generator, batch, -log_scale, log_scale))
    # Normalised coordinates span 2 units across the crop, so a shift of f·size is 2f units.
    shift_xy = torch.stack([_uniform(generator, batch, -shift, shift) for _ in range(2)], dim=1) * 2.0
    tilt = torch.stack([_uniform(generator, batch, -perspective, perspective) for _ in range(2)], dim=1)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    matrices = torch.zeros(batch, 3, 3, dtype=torch.float64)
    matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2] = cos, -sin, shift_xy[:, 0]
    matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2] = sin, cos, shift_xy[:, 1]
    matrices[:, 2, 0], matrices[:, 2, 1], matrices[:, 2, 2] = tilt[:, 0], tilt[:, 1], 1.0
    return matrices.float()


def _base_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """[H, W, 2] pixel-centre coordinates (x, y) in grid_sample's align_corners=False convention."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) * 2 + 1) / height - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) * 2 + 1) / width - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def map_grid(homographies: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Send the points of a [N or 1, H, W, 2] grid through [N, 3, 3] homographies."""
    batch = homographies.shape[0]
    height, width = grid.shape[1:3]
    points = torch.cat([grid, torch.ones_like(grid[..., :1])], dim=-1).reshape(grid.shape[0], -1, 3)
    mapped = points @ homographies.to(device=grid.device, dtype=torch.float32).transpose(1, 2)
    return (mapped[..., :2] / mapped[..., 2:3]).reshape(batch, height, width, 2)


def homography_grid(homographies: torch.Tensor, height: int, width: int, device: torch.device) -> torch.Tensor:
    """[N, H, W, 2] sampling grid for grid_sample from [N, 3, 3] sampling homographies."""
    return map_grid(homographies, _base_grid(height, width, device).unsqueeze(0))


def warp_with_grid(images: torch.Tensor, grid: torch.Tensor, padding_mode: str) -> torch.Tensor:
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False)


def compose_grids(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The sampling grid [N, H, W, 2] that reads through ``inner`` and then ``outer``: image(outer(inner(p))).
    ``outer`` [N, c, c, 2] holds the read points at c x c evenly spaced points from corner to corner of
    the crop (-1 to 1), interpolated bilinearly between them and held at the crop's edge beyond it."""
    return F.grid_sample(outer.permute(0, 3, 1, 2), inner, mode="bilinear", padding_mode="border",
                         align_corners=True).permute(0, 2, 3, 1)


def sampling_grids(
    homographies: torch.Tensor,
    height: int,
    width: int,
    device: torch.device,
    input_distortion: torch.Tensor | None = None,
    source_grid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target grid, input grid), each [N, H, W, 2]: where a batch's targets and inputs read their faces.

    ``input_distortion`` (a sampling grid [N, H, W, 2] from ``elastic_grid``) distorts the input
    only, composed with the homography into one sampling grid — input(p) = image(H(p + d(p))),
    the elastic warp of the warped image — so the input is resampled once, not blurred twice.
    ``source_grid`` ([N, c, c, 2] read points, see ``compose_grids``; e.g. ``facepipe.models.turn``'s) is
    applied before the homography, in the same one resampling: image(T(H(p))); rows of NaN leave
    their image as it is. The grids are in normalised coordinates, so they read a face stored at
    any resolution.
    """
    grid = homography_grid(homographies, height, width, device)
    input_grid = grid if input_distortion is None else map_grid(homographies, input_distortion)
    if source_grid is not None:
        rows = torch.isfinite(source_grid).flatten(1).all(dim=1).to(device)
        source_grid = source_grid.to(device=device, dtype=torch.float32)[rows]
        batch = len(homographies)
        grid, input_grid = grid.expand(batch, -1, -1, -1).clone(), input_grid.expand(batch, -1, -1, -1).clone()
        grid[rows], input_grid[rows] = compose_grids(source_grid, grid[rows]), compose_grids(source_grid, input_grid[rows])
    return grid, input_grid


def warp_face_batch(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    target_masks: torch.Tensor,
    homographies: torch.Tensor,
    input_distortion: torch.Tensor | None = None,
    source_grid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply the same homographies to input images, target images and target masks, with the
    input's own distortion and a turn first (``sampling_grids``).
    Images repeat their border outward (as the aligned crops do); masks fill with 0 (what comes
    in from outside the crop is not known to be face).
    """
    grid, input_grid = sampling_grids(homographies, *inputs.shape[-2:], inputs.device, input_distortion, source_grid)
    return (
        warp_with_grid(inputs, input_grid, "border"),
        warp_with_grid(targets, grid, "border"),
        warp_with_grid(target_masks, grid, "zeros"),
    )


# ---------------------------------------------------------------------------------------------
# Elastic warp (input only)


def elastic_grid(
    generator: torch.Generator,
    batch: int,
    height: int,
    width: int,
    device: torch.device,
    strength: float = AugmentConfig.elastic_strength,
    cells: int = AugmentConfig.elastic_cells,
) -> torch.Tensor:
    """[N, H, W, 2] smoothly distorted sampling grid: a ``cells``×``cells`` lattice of control
    points with Gaussian displacements (std ``strength``, normalised units; the border points
    stay put so nothing is pulled in from outside), interpolated bicubically to every pixel."""
    if cells < 3:
        raise ValueError(f"elastic warp needs at least 3 control points per side (border + interior), got {cells}")
    displacement = torch.randn(batch, 2, cells, cells, generator=generator, dtype=torch.float32) * strength
    border = torch.ones(cells, cells, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    displacement[:, :, border] = 0.0
    dense = F.interpolate(displacement.to(device), size=(height, width), mode="bicubic", align_corners=True)
    return _base_grid(height, width, device).unsqueeze(0) + dense.permute(0, 2, 3, 1)


def elastic_warp(
    images: torch.Tensor,
    generator: torch.Generator,
    strength: float = AugmentConfig.elastic_strength,
    cells: int = AugmentConfig.elastic_cells,
) -> torch.Tensor:
    """Smooth random distortion of each image (see ``elastic_grid``)."""
    batch, _, height, width = images.shape
    return warp_with_grid(images, elastic_grid(generator, batch, height, width, images.device, strength, cells), "border")


# ---------------------------------------------------------------------------------------------
# Colour jitter (same on input and target)


@dataclass(frozen=True)
class ColourJitter:
    offset: torch.Tensor  # [N, 1, 1, 1] added
    contrast: torch.Tensor  # [N, 1, 1, 1] scale around each image's mean
    gain: torch.Tensor  # [N, 3, 1, 1] per channel (B, G, R)


def random_colour_jitter(
    generator: torch.Generator, batch: int, brightness: float, contrast: float, channel_gain: float
) -> ColourJitter:
    return ColourJitter(
        offset=_uniform(generator, batch, -brightness, brightness).float().view(batch, 1, 1, 1),
        contrast=_uniform(generator, batch, 1 - contrast, 1 + contrast).float().view(batch, 1, 1, 1),
        gain=_uniform(generator, batch * 3, 1 - channel_gain, 1 + channel_gain).float().view(batch, 3, 1, 1),
    )


def apply_colour_jitter(images: torch.Tensor, jitter: ColourJitter) -> torch.Tensor:
    device = images.device
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = (images - mean) * jitter.contrast.to(device) + mean
    out = out * jitter.gain.to(device) + jitter.offset.to(device)
    return out.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# FaceFusion's sharpening (input only)

SHARPEN_SIGMA = 2.0
SHARPEN_AMOUNT = 0.75  # out = (1 + amount)·x − amount·blur(x)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """[K] normalised 1-D Gaussian with OpenCV's size for 8-bit images and kernel size 0
    (round(6σ + 1), made odd), which FaceFusion's GaussianBlur(crop, (0, 0), σ) uses."""
    size = int(round(sigma * 6 + 1)) | 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (kernel / kernel.sum()).float()


def sharpen(images: torch.Tensor, sigma: float = SHARPEN_SIGMA, amount: float = SHARPEN_AMOUNT) -> torch.Tensor:
    """FaceFusion's deep_swapper sharpening of NCHW images in [0, 1], clamped to [0, 1]: the
    float form of ``facepipe.evaluate.facefusion_sharpen`` (reflect-101 borders, as OpenCV's)."""
    channels = images.shape[1]
    kernel = gaussian_kernel(sigma).to(images.device, images.dtype)
    pad = len(kernel) // 2
    blurred = F.pad(images, (pad, pad, pad, pad), mode="reflect")  # torch's reflect is OpenCV's REFLECT_101
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return ((1 + amount) * images - amount * blurred).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Head turns (input, target and masks alike)


def random_turns(generator: torch.Generator, turns: np.ndarray, share: float, max_deg: float) -> torch.Tensor | None:
    """[N, c, c, 2] source grids (``compose_grids``) turning a drawn ``share`` of the faces by uniform
    angles in ±``max_deg``, read from the faces' turn tables [N, K, c, c, 2]
    (``facepipe.models.turn.turn_table``; NaN rows for the others and for faces without points),
    or None when no face is turned."""
    batch = len(turns)
    chosen = torch.rand(batch, generator=generator) < share
    angles = _uniform(generator, batch, -max_deg, max_deg) * (math.pi / 180.0)
    chosen &= torch.from_numpy(np.isfinite(turns).all(axis=(1, 2, 3, 4)))
    if not chosen.any():
        return None
    picked = chosen.numpy()
    grids = np.full((batch, *turns.shape[2:]), np.nan, dtype=np.float32)
    grids[picked] = turn.interpolated_grids(turns[picked], angles.numpy()[picked], max_deg)
    return torch.from_numpy(grids)


# ---------------------------------------------------------------------------------------------
# One call for a training batch


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, config: AugmentConfig = AugmentConfig(),
    turns: np.ndarray | None = None, sources: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input, target, target_mask) for a batch of faces [N, 3, S, S] and masks [N, 1, S, S].

    Target and mask get the shared homography; the input gets the same homography composed with
    the elastic warp (one resampling, see ``warp_face_batch``); colour jitter (if enabled) is
    the same on input and target; then the inputs drawn for it are sharpened (``sharpen``).
    ``turns`` [N, K, c, c, 2] (the faces' turn tables, NaN where FaceMesh found no face: see
    ``facepipe.models.turn.turn_table``) let a share ``turn`` of the faces turn in 3D first.
    ``sources`` [N, 3, S0, S0] (the same faces as stored, S0 >= S; uint8 or float in [0, 1]) let a
    share ``runtime_crop`` of the inputs be read from them as the runtimes cut a crop.
    Random draws happen in a fixed order (homography, colour, elastic, which faces to sharpen,
    which to mirror, which to turn and how far, which to cut as the runtimes do), each only when its
    part is enabled, so the same generator state gives the same batch, and switching the elastic
    warp off leaves targets and masks unchanged.
    """
    batch, _, height, width = images.shape
    homographies = random_homography(
        generator, batch, config.rotation_deg, config.scale, config.shift, config.perspective
    )
    jitter = None
    if config.brightness > 0 or config.contrast > 0 or config.channel_gain > 0:
        jitter = random_colour_jitter(generator, batch, config.brightness, config.contrast, config.channel_gain)
    distortion = None
    if config.elastic_strength > 0:
        distortion = elastic_grid(
            generator, batch, height, width, images.device, config.elastic_strength, config.elastic_cells
        )
    sharpened = None
    if config.sharpen > 0:
        sharpened = torch.rand(batch, generator=generator) < config.sharpen
    if config.flip > 0:
        # Mirror before sampling: H·diag(-1, 1, 1) reads the source at H(-x, y), so target and mask
        # are the mirror images of the unflipped ones (the input's elastic warp stays unmirrored).
        flipped = torch.rand(batch, generator=generator) < config.flip
        homographies[flipped, :, 0] *= -1.0
    source_grid = None
    if config.turn > 0 and turns is not None:
        source_grid = random_turns(generator, turns, config.turn, config.turn_deg)
    grid, input_grid = sampling_grids(homographies, height, width, images.device, distortion, source_grid)
    inputs = warp_with_grid(images, input_grid, "border")
    targets, target_masks = warp_with_grid(images, grid, "border"), warp_with_grid(masks, grid, "zeros")
    if config.runtime_crop > 0 and sources is not None:
        cut = (torch.rand(batch, generator=generator) < config.runtime_crop).nonzero().flatten()
        if len(cut):
            stored = sources[cut].to(images.device)
            stored = stored.float().div_(255.0) if stored.dtype == torch.uint8 else stored.to(images.dtype)
            cut = cut.to(images.device)
            inputs = inputs.index_copy(0, cut, warp_with_grid(stored, input_grid[cut], "border"))
    if jitter is not None:
        inputs, targets = apply_colour_jitter(inputs, jitter), apply_colour_jitter(targets, jitter)
    if sharpened is not None and sharpened.any():
        # Last, as FaceFusion sharpens the crop it is about to feed.
        chosen = sharpened.to(inputs.device).view(batch, 1, 1, 1)
        inputs = torch.where(chosen, sharpen(inputs), inputs)
    return inputs, targets, target_masks


def augment_with_features(
    images: torch.Tensor,
    masks: torch.Tensor,
    feature_masks: torch.Tensor | None,
    generator: torch.Generator,
    config: AugmentConfig = AugmentConfig(),
    turns: np.ndarray | None = None,
    sources: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``augment_batch`` that also warps the eyes-and-mouth masks [N, 1, S, S] (or None) exactly like
    the face masks: (input, target, target_mask, target_feature_mask or None). The masks travel as
    extra channels of one warp, so the random draws, and every other output, are those of
    ``augment_batch`` alone.

    ``device``: where the batch is moved and warped (None: where it is), the training device, so a
    GPU warps its own batches: on the CPU a batch of 32 faces at 256 px took 150-310 ms on one core
    and left an H200 idle four fifths of the time. The draws stay on the CPU (the module docstring),
    and the warps run in float32 under autocast too (fp16 grid coordinates would be ~0.1 px off)."""
    if device is not None:
        images, masks = images.to(device), masks.to(device)
        feature_masks = None if feature_masks is None else feature_masks.to(device)
    stacked = masks if feature_masks is None else torch.cat([masks, feature_masks], dim=1)
    with torch.autocast(images.device.type, enabled=False):
        inputs, targets, warped = augment_batch(images, stacked, generator, config, turns, sources)
    return inputs, targets, warped[:, :1], None if feature_masks is None else warped[:, 1:]


def turned_faces(images: torch.Tensor, masks: torch.Tensor, grids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces [N, 3, S, S] and masks [N, 1, S, S] read through turn grids [N, c, c, 2] (from
    ``turn.turn_grid``, or one angle's column of a ``turn.turn_table``), and nothing else moved:
    the turned copies of a face set."""
    straight = random_homography(torch.Generator(), len(images), 0.0, 0.0, 0.0, 0.0)
    _, faces, face_masks = warp_face_batch(images, images, masks, straight,
                                           source_grid=torch.from_numpy(np.asarray(grids, dtype=np.float32)))
    return faces, face_masks
