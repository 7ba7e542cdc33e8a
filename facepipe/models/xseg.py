"""XSeg: a U-Net that separates the visible face from whatever covers it, and its loss.

Conventions (shared with the training task, ``target_masks`` and the ONNX export):
- input: float NCHW in [0, 1], BGR (the colour order of the face set and of FaceFusion's
  occluder), 256x256 for the exported model; the network is fully convolutional, so any size
  divisible by ``2 ** depth`` works (a CPU demo may train at 128);
- output: one channel of *logits*. There is no sigmoid in ``forward``: the one sigmoid of
  training lives in ``xseg_loss`` and the one of inference in ``XSegNHWC`` /
  ``predict_probabilities``. Applying it twice (a sigmoid in the model and BCE on top of it)
  is the bug this layout rules out.

Determinism: no BatchNorm (GroupNorm does not depend on the batch composition or on running
statistics), stride-2 convolutions to go down and a 1x1 convolution + pixel shuffle to go up
(no interpolation or max-pool backward kernels, which are non-deterministic on CUDA). All of it
exports to plain ONNX operators (Conv, GroupNorm/InstanceNorm, DepthToSpace).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.store import atomic_write_bytes
from facepipe.train.checkpoints import weights_to_bytes

XSEG_SIZE = 256  # the size the exported model takes (FaceFusion's occluder input)
DEFAULT_WIDTH = 32  # channels at full resolution; the GPU setting
DEFAULT_DEPTH = 5  # 256 -> 8 px at the bottleneck
MAX_WIDTH_MULTIPLIER = 8  # channels stop doubling at width * 8
# A saved model is a folder: the U-Net's weights and the config that builds the deployed form.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
DICE_SMOOTHING = 1.0  # additive smoothing of the soft Dice ratio: an empty label and an empty prediction score 0 loss


def group_count(channels: int, max_groups: int = 8) -> int:
    """The largest group count <= max_groups that divides `channels` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, max_groups + 1) if channels % g == 0)


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by GroupNorm and SiLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(group_count(out_channels), out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(group_count(out_channels), out_channels),
            nn.SiLU(),
        )


class Down(nn.Sequential):
    """Halve the resolution with a stride-2 convolution, then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1),
            ConvBlock(in_channels, out_channels),
        )


class Up(nn.Module):
    """Double the resolution (1x1 conv to 4x channels + pixel shuffle), join the skip, ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.expand = nn.Conv2d(in_channels, out_channels * 4, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.block = ConvBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.shuffle(self.expand(x)), skip], dim=1))


class XSegUNet(nn.Module):
    """U-Net: BGR [0, 1] NCHW in, one channel of face logits out (same height and width)."""

    def __init__(self, width: int = DEFAULT_WIDTH, depth: int = DEFAULT_DEPTH):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"XSegUNet needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
        self.width, self.depth = width, depth
        channels = [width * min(2**level, MAX_WIDTH_MULTIPLIER) for level in range(depth + 1)]
        self.stem = ConvBlock(3, channels[0])
        self.downs = nn.ModuleList(Down(channels[i], channels[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(channels[i + 1], channels[i], channels[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(channels[0], 1, 1)

    @property
    def size_multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if x.shape[1] != 3 or height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"XSegUNet takes [N, 3, H, W] with H and W divisible by {self.size_multiple}; got {tuple(x.shape)}"
            )
        x = self.stem(x * 2.0 - 1.0)  # centre the [0, 1] input
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)


def xseg_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """BCE-with-logits + dice_weight x soft Dice loss, as a 0-d tensor.

    `logits` and `target` have the same shape [N, 1, H, W] (or [N, H, W]); target in {0, 1}
    (soft targets in [0, 1] also work). The BCE takes logits (log-sigmoid inside, numerically
    stable for any logit); the Dice term applies the one sigmoid, per sample, then averages
    over the batch. Computed in float32 so it is safe under autocast.
    """
    if logits.shape != target.shape:
        raise ValueError(f"xseg_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probabilities = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    overlap = (probabilities * target).sum(dim=1)
    total = probabilities.sum(dim=1) + target.sum(dim=1)
    dice = 1.0 - (2.0 * overlap + DICE_SMOOTHING) / (total + DICE_SMOOTHING)
    return bce + dice_weight * dice.mean()


def iou_per_sample(predicted, target) -> np.ndarray:
    """IoU of boolean masks [N, H, W] (numpy or CPU tensors), one value per sample.

    A sample where both masks are empty scores 1.0 (nothing to find, nothing found).
    """
    predicted, target = np.asarray(predicted, dtype=bool), np.asarray(target, dtype=bool)
    if predicted.shape != target.shape or predicted.ndim != 3:
        raise ValueError(f"iou: expected two [N, H, W] masks of one shape, got {predicted.shape} and {target.shape}")
    intersection = (predicted & target).sum(axis=(1, 2))
    union = (predicted | target).sum(axis=(1, 2))
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1)).astype(np.float64)


def mean_iou(predicted, target) -> float:
    """Mean over samples of ``iou_per_sample``."""
    return float(iou_per_sample(predicted, target).mean())


def crops_to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 BGR crops [N, H, W, 3] -> float32 NCHW in [0, 1] (the model's input)."""
    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"expected uint8 crops [N, H, W, 3], got {crops.dtype} {crops.shape}")
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)


def masks_to_tensor(masks: np.ndarray) -> torch.Tensor:
    """Masks [N, H, W] (uint8 {0, 255}, {0, 1} or bool; non-zero = face) -> float32 [N, 1, H, W] in {0, 1}."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected masks [N, H, W], got {masks.shape}")
    return torch.from_numpy(np.ascontiguousarray(masks > 0)).float().unsqueeze(1)


class XSegNHWC(nn.Module):
    """The deployed form: NHWC BGR [0, 1] in, NHWC [0, 1] face mask out ([N, H, W, 1]).

    FaceFusion's occluder convention: input ``input`` float32 [1, 256, 256, 3], output a mask
    in [0, 1] where 1 = visible face. Holds the one inference sigmoid. A U-Net trained at a
    smaller `resolution` (CPU demo) sees the input area-downsampled by an integer factor, the
    resolution it learned at, and its logits are upsampled back: the interface stays 256.
    """

    def __init__(self, unet: XSegUNet, resolution: int | None = None, size: int = XSEG_SIZE):
        super().__init__()
        self.unet, self.size = unet, size
        self.factor = 1 if resolution in (None, size) else size // resolution
        if self.factor * (resolution or size) != size:
            raise ValueError(f"XSeg training resolution {resolution} must divide the export size {size}")

    @property
    def resolution(self) -> int:
        return self.size // self.factor

    def save(self, folder: Path) -> None:
        """Write the U-Net's ``model.safetensors`` and ``model_config.json`` (width, depth, training resolution)."""
        config = {"width": self.unet.width, "depth": self.unet.depth, "resolution": self.resolution, "size": self.size}
        atomic_write_bytes(Path(folder) / WEIGHTS_FILE, weights_to_bytes(self.unet.state_dict()))
        atomic_write_bytes(Path(folder) / CONFIG_FILE, (json.dumps(config, sort_keys=True) + "\n").encode())

    @classmethod
    def from_folder(cls, folder: Path) -> XSegNHWC:
        """The deployed model saved by ``save``, in eval mode."""
        config_path = Path(folder) / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found; materialize xseg_model for this target first")
        config = json.loads(config_path.read_text())
        unet = XSegUNet(width=config["width"], depth=config["depth"])
        unet.load_state_dict(safetensors.torch.load_file(str(Path(folder) / WEIGHTS_FILE)))
        return cls(unet, config["resolution"], config["size"]).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nchw = x.permute(0, 3, 1, 2)
        if self.factor > 1:
            logits = self.unet(F.avg_pool2d(nchw, self.factor))  # = cv2.INTER_AREA for integer factors
            logits = F.interpolate(logits, scale_factor=self.factor, mode="bilinear", align_corners=False)
        else:
            logits = self.unet(nchw)
        return torch.sigmoid(logits).permute(0, 2, 3, 1)


@torch.no_grad()
def predict_probabilities(model: XSegUNet, crops: np.ndarray, batch_size: int = 16,
                          device: torch.device | str = "cpu") -> np.ndarray:
    """Face probabilities float32 [N, H, W] in [0, 1] for uint8 BGR crops [N, H, W, 3].

    Runs in eval mode in batches (crops may be a memory map); restores the model's mode after.
    """
    was_training = model.training
    model.eval()
    try:
        out = np.empty(np.shape(crops)[:3], dtype=np.float32)
        for start in range(0, len(crops), batch_size):
            batch = crops_to_tensor(np.asarray(crops[start:start + batch_size])).to(device)
            out[start:start + len(batch)] = torch.sigmoid(model(batch)).squeeze(1).float().cpu().numpy()
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_masks(deployed: XSegNHWC, crops: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """uint8 [N, 256, 256] face masks (probability * 255) through the deployed (exported) form,
    so the masks downstream training uses are the ones the ONNX model gives."""
    deployed.eval()
    out = np.empty(np.shape(crops)[:3], dtype=np.uint8)
    for start in range(0, len(crops), batch_size):
        batch = torch.from_numpy(np.asarray(crops[start:start + batch_size]).astype(np.float32) / 255)
        out[start:start + len(batch)] = np.round(deployed(batch)[..., 0].numpy() * 255).astype(np.uint8)
    return out
