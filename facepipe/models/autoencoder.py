"""The per-identity generator: encoder → dense bottleneck → decoder, BGR image + face mask.

Shape of the network (DeepFaceLab's "df" layout, without the second person):
- ``encoder``: ``depth`` stride-2 5×5 convolutions, S → S / 2**depth, widths
  ``width·1, ·2, ·4, ·8`` (capped at ·8);
- ``bottleneck``: flatten → Linear(latent_dim) → Linear back to the same spatial code, no
  activation in between (a rank-limited linear map, as DFL's "inter"), unflattened to the
  code tensor [N, C, S/2**depth, S/2**depth] that the decoder reads;
- ``decoder``: ``depth - 1`` ×2 upscales (3×3 conv to 4·C + pixel shuffle), each followed by a
  residual block, up to S/2; then two 3×3 heads whose 4 sub-pixels are shuffled to S:
  ``to_bgr`` (sigmoid → [0, 1]) and ``to_mask`` (logits; the one sigmoid is applied by the
  loss or the export, never twice).

Conventions: NCHW float32 in [0, 1], channels in BGR order (the stored crops are OpenCV BGR
and the exported DFM model takes BGR), crops aligned to the ``dfl_whole_face`` template.
No normalisation layers: the output of a sample never depends on the rest of its batch, so
training is deterministic and export is exact, and every weight lives in a plain
``nn.Conv2d`` / ``nn.Linear`` that peft's LoRA can target by name — one adapter set on
``encoder.*`` + ``bottleneck.*`` and one on ``decoder.*`` (see DESIGN.md, LoRA adapter).

The identity embedding is deliberately not an input: measured, a decoder conditioned on it
learns to ignore it (DESIGN.md, Models).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from facepipe.models.counting import count_parameters
from facepipe.store import atomic_write_bytes
from facepipe.train.checkpoints import weights_to_bytes

LEAKY_SLOPE = 0.1  # DeepFaceLab's choice: negative pre-activations still pass a gradient.
# A saved model is a folder: the weights and, beside them, the config that builds the network.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture hyperparameters. The defaults are the CPU setting (minutes on 2 cores).

    GPU settings are only other values, e.g. ``GPU_PRESETS`` below.
    """

    size: int = 96  # crop size S the model reads and writes
    width: int = 24  # channels of the first encoder level (and of the last decoder level)
    latent_dim: int = 256  # width of the dense bottleneck
    depth: int = 4  # stride-2 levels: the code tensor is S / 2**depth on a side

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"AutoencoderConfig.depth must be >= 1, got {self.depth}")
        if self.size % (2**self.depth) != 0:
            raise ValueError(
                f"AutoencoderConfig.size={self.size} must be divisible by 2**depth={2**self.depth}; "
                f"pick a size that is a multiple of {2**self.depth} or change depth"
            )
        if self.width < 1 or self.latent_dim < 1:
            raise ValueError(f"AutoencoderConfig.width and latent_dim must be positive, got {self.width}, {self.latent_dim}")

    @property
    def code_size(self) -> int:
        return self.size // 2**self.depth

    @property
    def level_channels(self) -> list[int]:
        """Channels per encoder level, finest first; the decoder walks them back."""
        return [self.width * 2 ** min(level, 3) for level in range(self.depth)]

    def to_dict(self) -> dict:
        return asdict(self)


# Documented GPU settings (one more level keeps the dense bottleneck at ~7-10 px a side, so its
# weight count stays in the tens of millions rather than hundreds).
GPU_PRESETS = {
    "gpu_224": AutoencoderConfig(size=224, width=48, latent_dim=512, depth=5),
    "gpu_256": AutoencoderConfig(size=256, width=48, latent_dim=512, depth=5),
    "gpu_320": AutoencoderConfig(size=320, width=64, latent_dim=512, depth=5),
}


def _activation() -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE)


class Encoder(nn.Module):
    """[N, 3, S, S] BGR in [0, 1] → [N, C, S/2**depth, S/2**depth] features."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for channels in config.level_channels:
            layers += [nn.Conv2d(in_channels, channels, kernel_size=5, stride=2, padding=2), _activation()]
            in_channels = channels
        self.layers = nn.Sequential(*layers)

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        # Centre the [0, 1] input so the first layer starts near zero mean.
        return self.layers(bgr * 2.0 - 1.0)


class Bottleneck(nn.Module):
    """Features → latent vector → code tensor of the same shape the encoder produced."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        channels = config.level_channels[-1]
        self.code_shape = (channels, config.code_size, config.code_size)
        flat = channels * config.code_size**2
        self.to_latent = nn.Linear(flat, config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, flat)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.code_of(self.to_latent(features.flatten(1)))

    def code_of(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent vector → code tensor. A constant target shape (not nn.Unflatten) keeps the
        exported graph a single Reshape."""
        return self.from_latent(latent).reshape(-1, *self.code_shape)


def icnr_(conv: nn.Conv2d, scale: int = 2) -> nn.Conv2d:
    """ICNR initialisation (Aitken et al., 2017) of a conv that feeds a pixel shuffle: the
    scale² sub-pixels of each output channel start with one shared kernel, so the upsampling
    starts as nearest-neighbour instead of four unrelated filters — the checkerboard a plain
    initialisation leaves in the output. Measured on a real identity (german_news, 20 epochs,
    96 px): period-2 checkerboard of held-out reconstructions 3.17 -> 0.43 grey levels (the
    faces themselves: 1.10), same reconstruction error."""
    sub_pixels = scale**2
    with torch.no_grad():
        shared = torch.empty(conv.out_channels // sub_pixels, *conv.weight.shape[1:])
        nn.init.kaiming_uniform_(shared, a=5**0.5)  # nn.Conv2d's own default initialisation
        conv.weight.copy_(shared.repeat_interleave(sub_pixels, dim=0))
        if conv.bias is not None:
            conv.bias.copy_(conv.bias[::sub_pixels].repeat_interleave(sub_pixels))
    return conv


class Upscale(nn.Module):
    """×2 upsampling by a 3×3 conv to 4·C channels and a pixel shuffle (no interpolation op,
    deterministic backward on every device, exported as ONNX DepthToSpace), ICNR-initialised."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = icnr_(nn.Conv2d(in_channels, out_channels * 4, kernel_size=3, padding=1))
        self.act = _activation()
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.act(self.conv(x)))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.act1 = _activation()
        self.act2 = _activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(x + self.conv2(self.act1(self.conv1(x))))


class Decoder(nn.Module):
    """Code tensor → (BGR in [0, 1], mask logits), both [N, ·, S, S].

    The upscales stop at S/2; the two heads predict 4 sub-pixels each there and a pixel shuffle
    lays them out at S (DFL's "-d" trick): a full-resolution conv layer would cost as much as
    the rest of the decoder for little visible gain at these sizes.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        levels = config.level_channels
        blocks: list[nn.Module] = []
        in_channels = levels[-1]
        # Walk the encoder's widths back: code (levels[-1]) → levels[-2] → … → levels[0] at S/2.
        for channels in levels[-2::-1]:
            blocks += [Upscale(in_channels, channels), ResidualBlock(channels)]
            in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.to_bgr = icnr_(nn.Conv2d(in_channels, 3 * 4, kernel_size=3, padding=1))
        self.to_mask = icnr_(nn.Conv2d(in_channels, 1 * 4, kernel_size=3, padding=1))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.blocks(code)
        return torch.sigmoid(self.shuffle(self.to_bgr(features))), self.shuffle(self.to_mask(features))


class IdentityAutoencoder(nn.Module):
    """The per-identity model. ``forward(x) -> (bgr in [0, 1], mask_logits)``."""

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = config or AutoencoderConfig()
        self.encoder = Encoder(self.config)
        self.bottleneck = Bottleneck(self.config)
        self.decoder = Decoder(self.config)

    def encode(self, bgr: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] BGR in [0, 1] → code tensor (what the LoRA swap shares between paths)."""
        self._check_input(bgr)
        return self.bottleneck(self.encoder(bgr))

    def decode(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Code tensor → (BGR in [0, 1], mask logits)."""
        return self.decoder(code)

    def forward(self, bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.encode(bgr))

    def save(self, folder: Path) -> None:
        """Write ``model.safetensors`` and ``model_config.json`` into ``folder`` (deterministic bytes)."""
        atomic_write_bytes(Path(folder) / WEIGHTS_FILE, weights_to_bytes(self.state_dict()))
        atomic_write_bytes(Path(folder) / CONFIG_FILE, (json.dumps(self.config.to_dict(), sort_keys=True) + "\n").encode())

    @classmethod
    def from_folder(cls, folder: Path) -> IdentityAutoencoder:
        """A model saved by ``save``, frozen (no gradients) and in eval mode."""
        return load_identity_model(Path(folder) / WEIGHTS_FILE, model_config_of(folder))

    def _check_input(self, bgr: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are fixed by the example input during export
            return
        size = self.config.size
        if bgr.dim() != 4 or bgr.shape[1] != 3 or bgr.shape[2] != size or bgr.shape[3] != size:
            raise ValueError(
                f"IdentityAutoencoder expects NCHW BGR input [N, 3, {size}, {size}], got {list(bgr.shape)}; "
                f"resize the crops to the model's size (facepipe.faces.resize_crops)"
            )


def parameter_counts(model: IdentityAutoencoder) -> dict[str, int]:
    """Parameters per part and in total (the LoRA budget is a share of ``total``)."""
    counts = {name: count_parameters(getattr(model, name)) for name in ("encoder", "bottleneck", "decoder")}
    counts["total"] = count_parameters(model)
    return counts


def adaptable_layers(model: nn.Module, parts: tuple[str, ...]) -> list[str]:
    """Sorted names of the nn.Conv2d / nn.Linear layers under the given top-level parts, e.g.
    ``("encoder", "bottleneck")`` — the explicit ``target_modules`` list for a peft LoRA set
    (a name pattern would also match the containers, which peft rejects)."""
    unknown = set(parts) - {name for name, _ in model.named_children()}
    if unknown:
        raise ValueError(f"adaptable_layers: {model.__class__.__name__} has no part(s) {sorted(unknown)}")
    return sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name.split(".", 1)[0] in parts
    )


def model_config_of(folder: Path) -> AutoencoderConfig:
    """The config of a model saved by ``IdentityAutoencoder.save``."""
    config_path = Path(folder) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; materialize identity_model for this identity first")
    return AutoencoderConfig(**json.loads(config_path.read_text()))


def load_identity_model(weights_path: Path | str, model_config: AutoencoderConfig) -> IdentityAutoencoder:
    """The identity model from its safetensors file, frozen (no gradients) and in eval mode."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"identity model weights {weights_path} not found; materialize identity_model for this identity first"
        )
    # Built on the meta device and filled from the file: no random initialisation is drawn, so
    # loading the base never moves the global RNG that seeds the LoRA initialisation.
    with torch.device("meta"):
        model = IdentityAutoencoder(model_config)
    weights = safetensors.torch.load_file(str(weights_path))
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(
            f"{weights_path} does not fit an IdentityAutoencoder with {model_config}: {error}. "
            f"Pass the model config the identity model was trained with"
        ) from error
    model.requires_grad_(False)
    return model.eval()
