"""LoRA adapter per identity×target on the frozen identity model, and the merged swap model.

Wiring (DESIGN.md, Models: LoRA adapter), with peft's LoRA:

    target face   → (encoder + bottleneck + Δshared) → (decoder + Δtarget) → target face
    identity face → (encoder + bottleneck + Δshared) → base decoder       → identity face
    swap          = (encoder + bottleneck + Δshared) → base decoder

Δshared is one adapter set (peft adapter name ``shared``) on every conv/linear of the encoder and
bottleneck, used by both paths; Δtarget (adapter name ``target``) sits on a copy of the decoder
that only the target path uses. The target path teaches the shared encoder delta to put the
target's pose, expression and light into the code; the identity replay keeps the code readable
by the base decoder, which can only paint the identity. The swap is then the identity rendered
from the target's code. The base weights never train: only LoRA tensors require gradients, only
they are checkpointed, and every (re)build loads the base from the identity model's safetensors
file, so a resumed run continues on exactly the same base.

Export merges Δshared into the encoder with peft's ``merge_and_unload``; the swap model is a
plain ``IdentityAutoencoder`` (merged encoder, base decoder). Δtarget stays in the adapter file
(the training scaffold); merged into its decoder copy it also gives the input face's mask (the
target path's mask head, trained on the target masks), the default ``out_face_mask:0`` of the
DFM export, and the far end of its ``morph_value:0`` input (0: the target path, the target's
own face; 1: the swap; see MorphingDecoder).

The swap latent offset: the adapter brings the target's latents toward the identity's but not onto
them, and the base decoder renders latents off the identity's manifold as a washed-out average
face — the same blurry face whatever the target does. After training, the mean latent of the
identity's faces minus that of the target's (both through the adapted encoder) is stored as
``swap_latent_offset`` and added to every swap's latent; export folds it into the swap
bottleneck's bias (no extra op in the graph). Measured on german_news -> obama (30 held-out
frames, FaceFusion feeding): the target latents sat 10.9 from the identity's mean against a
per-face spread of 3.8 (24.3 before the adapter); with the offset, sharpness ratio 0.05 -> 0.13
(0.07 -> 0.24 on an identity model trained with the discriminator), yaw following 0.02 -> 0.67,
eyes -0.17 -> 0.54, identity distance 0.38 -> 0.36.
The identity's mean is taken over faces matched to the target's poses (``pose_matched_weights``:
each target face picks the identity faces nearest in yaw and pitch, their mirror images too when
the identity model learnt mirrored faces). A plain mean carries the identity's average pose into
every swap: on kim -> mead (kim turns 0..12 deg, mead -12..-5) the swaps turned 2..10 deg, the
wrong way, whatever mead did.
The swap gain (``AdapterConfig.swap_gain``): the adapted encoder reads the target's motion into a
smaller swing of the latent than the base decoder needs to paint it (the swaps moved 0.73-0.90 as
much from frame to frame as their targets), so the swap reads gain·latent + offset, the offset
taken as the identity's mean minus gain times the target's: the target's latents spread by the
gain about the identity's mean. Export folds the gain into the same linear.
Following the target's pose (``AdapterConfig.pose_follow``, off by default): the swap latent also
moves along the identity's own pose directions by the target's pose, read off the input crop by a
small CNN trained on the target's crops (facepipe.models.pose; ``set_pose_follow``), or along the
identity's yaw direction less the target's by the yaw read off the mask the target path paints
(``AdapterConfig.pose_reading`` "mask"). Following the target's mouth (``AdapterConfig.mouth_follow``)
the same way: along the identity's own direction of the mouth's opening, by the opening a second
small CNN reads off the crop. Both are part of the swap: the export runs the CNNs beside the
encoder (``TargetLatent``), the mask's readout in the decoder (``MorphingDecoder``).

Saved adapter: ``adapter.safetensors`` (the LoRA tensors, the swap latent offset and, with pose_follow
or mouth_follow, the readers and the identity's directions, named as in ``PairModel.state_dict()``)
beside ``adapter_config.json`` (rank, alpha, target modules per set, the base model's config and
the sha256 of the base weights it was trained on, parameter counts).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import peft
import safetensors.torch
import torch
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from torch import nn

from facepipe.models.autoencoder import (
    AutoencoderConfig,
    IdentityAutoencoder,
    adaptable_layers,
    load_identity_model,
)
from facepipe.models.counting import count_parameters
from facepipe.models.pose import (MaskYawReadout, PointPoseReader, PoseReader, fit_mask_yaw_readout, kept, mirror_images,
                                  train_point_pose_reader, train_pose_reader)
from facepipe.models.swap import DfmSwapModel
from facepipe.store import atomic_write_bytes, file_sha256
from facepipe.train.checkpoints import weights_to_bytes

SHARED_ADAPTER = "shared"  # peft adapter name on encoder + bottleneck (both paths)
TARGET_ADAPTER = "target"  # peft adapter name on the target path's decoder copy
SHARED_PARTS = ("encoder", "bottleneck")
# PairModel submodule names: the prefixes of the adapter tensors in the saved file.
AUTOENCODER_PREFIX = "autoencoder."
TARGET_DECODER_PREFIX = "target_decoder."
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_FORMAT = "facepipe.pair_lora"
ADAPTER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class AdapterConfig:
    """LoRA hyperparameters and the mix of the two training paths."""

    rank: int = 8
    alpha: float = 16.0  # peft scales the delta by alpha / rank
    dropout: float = 0.0  # 0: no extra random stream, training stays a function of the seed
    # Weight of the identity replay loss beside the target loss (1: the two paths count equally).
    identity_replay_weight: float = 1.0
    # Weight of the eyes-and-mouth L1 in both paths' losses (facepipe.models.losses; 0: off).
    eyes_mouth_weight: float = 0.0
    # Both adapter sets together may hold at most this share of the base's parameters.
    max_share: float = 0.05
    # Share of the trained shared (encoder) delta the swap reads the target with (1: all of it; a
    # LoRA "strength"). The delta is what lets the target path reconstruct the target; at full size
    # it also carries the target's yaw along directions the identity decoder hardly reads (README,
    # "Why yaw stays short there"). Measured at the demo length (README, the swap_strength table):
    # 1 -> 0.5 took one german_news -> obama build's yaw r 0.73 -> 0.84, but a fresh build's mouth
    # 0.52 -> 0.06, kim -> mead's pitch 0.75 -> 0.33, obama_early -> vox's yaw 0.69 -> 0.27: a
    # per-pair setting, so the default keeps the whole delta.
    swap_strength: float = 1.0
    # How far the swap's latent moves with the target's: the target's latents are spread by this
    # factor about their mean before the swap latent offset moves that mean onto the identity's
    # (1: as the adapted encoder reads them). The adapted encoder reads the target's motion into a
    # smaller swing than the identity decoder needs to paint it: at 1 the swap changes 0.73-0.90 as
    # much from frame to frame as the target does. Measured at the demo length on eight adapters of
    # three pairs (docs/swap_quality.md, "The swap's gain"): 1 -> 1.5 took german_news -> obama's mouth past 0.6 on
    # three adapter seeds of three (0.45-0.54 -> 0.61-0.64), kim -> mead's yaw and pitch up on three
    # of three; obama_early -> vox mixed (yaw up, pitch down on one adapter of two); the swap's
    # frame-to-frame change 1.05-1.28 of the target's, as a perfect copy of the target reads
    # (1.17-1.25); at 2 more than that (1.31-1.52).
    swap_gain: float = 1.5
    # How far the swap's pose follows the target's (0: off): the swap latent also moves along the
    # identity's own pose directions by the target's pose as a CNN reads it off the crop, times this
    # share (``set_pose_follow``, facepipe.models.pose). The adapted encoder carries the target's
    # turn along directions the identity decoder hardly reads (docs/swap_quality.md, "Why yaw stays
    # short"); this hands it over along the ones it does. Measured (docs/swap_quality.md, "Handing
    # the target's pose over"): for a target that turns within the identity's (turned) faces; where the
    # target turns far beyond them (obama_early -> vox) the CNN misreads it and the face breaks, so
    # such a pair reads the yaw off the target path's mask instead (``pose_reading``).
    pose_follow: float = 0.0
    # What pose_follow reads the target's pose with (``set_pose_follow``): "crop", yaw and pitch by
    # the CNN off the input crop, moved along the identity's pose directions; "mask", yaw alone by a
    # readout off the mask the target path paints for the input (``MaskYawReadout``), moved along the
    # identity's yaw direction less the target's own (the swap's pitch stays the latent's). The mask's
    # outline holds on frames the CNN misreads (a target turning far: docs/swap_quality.md, "The swap
    # at the target's pose, given it"); the export then runs the decoder twice.
    pose_reading: str = "crop"
    # How far the swap's mouth follows the target's (0: off): the swap latent also moves along the
    # identity's own direction of the mouth's opening by the opening a CNN reads off the crop
    # (``set_pose_follow``), times this share. The adapted latent tells the target's mouth on frames
    # the adapter never saw only at r 0.6-0.7 (a ridge readout off it, german_news -> obama), so the
    # swap's mouth followed at 0.74; the CNN reads it at r 0.93-0.96 and the swap's mouth then follows
    # at 0.87-0.92 (docs/swap_quality.md, "The swap's mouth, read off the crop").
    mouth_follow: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"AdapterConfig.rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"AdapterConfig.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"AdapterConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.identity_replay_weight >= 0:
            raise ValueError(f"AdapterConfig.identity_replay_weight must be >= 0, got {self.identity_replay_weight!r}")
        if not self.eyes_mouth_weight >= 0:
            raise ValueError(f"AdapterConfig.eyes_mouth_weight must be >= 0, got {self.eyes_mouth_weight!r}")
        if not 0 <= self.swap_strength <= 1:
            raise ValueError(f"AdapterConfig.swap_strength must be in [0, 1], got {self.swap_strength!r}")
        if not self.swap_gain > 0:
            raise ValueError(f"AdapterConfig.swap_gain must be > 0, got {self.swap_gain!r}")
        if not self.pose_follow >= 0:
            raise ValueError(f"AdapterConfig.pose_follow must be >= 0, got {self.pose_follow!r}")
        if not self.mouth_follow >= 0:
            raise ValueError(f"AdapterConfig.mouth_follow must be >= 0, got {self.mouth_follow!r}")
        if self.pose_reading not in POSE_READINGS:
            raise ValueError(f"AdapterConfig.pose_reading must be one of {POSE_READINGS}, got {self.pose_reading!r}")

    def to_dict(self) -> dict:
        return asdict(self)



# ---------------------------------------------------------------------------------------------
# peft wiring


def _decoder_layers(decoder: nn.Module) -> list[str]:
    return sorted(name for name, module in decoder.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear)))


def shared_lora_config(base: IdentityAutoencoder, adapter: AdapterConfig) -> LoraConfig:
    """peft LoraConfig of the shared set: every conv/linear of encoder and bottleneck, by name."""
    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adaptable_layers(base, SHARED_PARTS),
        bias="none",
    )


def target_lora_config(decoder: nn.Module, adapter: AdapterConfig) -> LoraConfig:
    """peft LoraConfig of the target set: every conv of the decoder (names inside the decoder)."""
    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=_decoder_layers(decoder),
        bias="none",
    )


SWAP_LATENT_OFFSET = "swap_latent_offset"  # PairModel buffers, saved with the LoRA tensors
# With pose_follow or mouth_follow: the latent step per unit of what is read ([K, D]: the pose's rows
# (yaw and pitch off the crop, or yaw off the mask), then the mouth's).
SWAP_POSE_DIRECTIONS = "swap_pose_directions"
POSE_READER_PREFIX = "pose_reader."  # with pose_follow: the PointPoseReader's or the MaskYawReadout's tensors
MOUTH_READER_PREFIX = "mouth_reader."  # with mouth_follow: the mouth's PoseReader's tensors
POSE_READINGS = ("crop", "mask")  # AdapterConfig.pose_reading


def swap_latents(latent: torch.Tensor, gain: float, offset: torch.Tensor, pose: torch.Tensor | None = None,
                 pose_directions: torch.Tensor | None = None) -> torch.Tensor:
    """The latents [N, D] the swap paints from, of the adapted latents [N, D]: gain·latent + offset,
    plus, when the pose or the mouth follows (``set_pose_follow``), what is read off the input [N, K]
    (yaw, pitch in degrees, the mouth's opening: ``PairModel.read_pose``) times the identity's
    directions [K, D]."""
    swap = gain * latent + offset
    return swap if pose_directions is None else swap + pose @ pose_directions


def is_adapter_tensor(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def is_pose_follow_tensor(name: str) -> bool:
    """The readers' tensors and the identity's directions (only with pose_follow or mouth_follow > 0)."""
    return name.startswith((POSE_READER_PREFIX, MOUTH_READER_PREFIX)) or name == SWAP_POSE_DIRECTIONS


def is_saved_tensor(name: str) -> bool:
    """What an adapter file holds: the LoRA tensors, the swap latent offset and what pose_follow adds."""
    return is_adapter_tensor(name) or name == SWAP_LATENT_OFFSET or is_pose_follow_tensor(name)


class PairModel(nn.Module):
    """The frozen identity model with the two LoRA sets (see the module docstring).

    ``forward(x)`` is the swap; ``encode`` / ``identity_decode`` / ``target_decode`` are the
    pieces the training paths combine. Built from a copy of ``base``; only LoRA tensors train.
    Raises ValueError when the adapters would exceed ``adapter.max_share`` of the base.
    """

    def __init__(self, base: IdentityAutoencoder, adapter: AdapterConfig = AdapterConfig()):
        super().__init__()
        self.adapter = adapter
        self.model_config = base.config
        self.base_parameters = count_parameters(base)
        self.shared_modules = adaptable_layers(base, SHARED_PARTS)
        self.target_modules = _decoder_layers(base.decoder)
        autoencoder = copy.deepcopy(base)
        target_decoder = copy.deepcopy(base.decoder)
        self.autoencoder = inject_adapter_in_model(shared_lora_config(base, adapter), autoencoder, SHARED_ADAPTER)
        self.target_decoder = inject_adapter_in_model(target_lora_config(base.decoder, adapter), target_decoder, TARGET_ADAPTER)
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(is_adapter_tensor(name))
        self.adapter_parameters = sum(p.numel() for n, p in self.named_parameters() if is_adapter_tensor(n))
        # Set after training by set_swap_offset; zero while training (no path reads it then).
        self.register_buffer(SWAP_LATENT_OFFSET, torch.zeros(base.config.latent_dim))
        # Set after training by set_pose_follow (with pose_follow or mouth_follow > 0), and only then: training never
        # builds them, so they draw no random numbers and are in no checkpoint.
        self.pose_reader: PointPoseReader | MaskYawReadout | None = None
        self.mouth_reader: PoseReader | None = None
        self.register_buffer(SWAP_POSE_DIRECTIONS, None)
        if self.adapter_share > adapter.max_share:
            raise ValueError(
                f"LoRA rank {adapter.rank} gives {self.adapter_parameters} adapter parameters, "
                f"{100 * self.adapter_share:.2f}% of the identity model's {self.base_parameters} "
                f"(limit {100 * adapter.max_share:g}%); lower the rank"
            )

    @property
    def adapter_share(self) -> float:
        return self.adapter_parameters / self.base_parameters

    def encode(self, bgr: torch.Tensor) -> torch.Tensor:
        """(encoder + bottleneck + Δshared): the code both paths read."""
        return self.autoencoder.encode(bgr)

    def identity_decode(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The base decoder (no delta): what the swap renders with."""
        return self.autoencoder.decode(code)

    def target_decode(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder copy + Δtarget: the target path only."""
        return self.target_decoder(code)

    def latent(self, bgr: torch.Tensor) -> torch.Tensor:
        """(encoder + bottleneck's first linear + Δshared): [N, latent_dim]."""
        autoencoder = self.autoencoder
        autoencoder._check_input(bgr)
        return autoencoder.bottleneck.to_latent(autoencoder.encoder(bgr).flatten(1))

    def swap_latent(self, bgr: torch.Tensor) -> torch.Tensor:
        """The latent the swap reads: the shared delta at ``adapter.swap_strength`` (no offset)."""
        with shared_delta_scaled(self, self.adapter.swap_strength):
            return self.latent(bgr)

    def attach_pose_follow(self, reader: PointPoseReader | MaskYawReadout | None, directions: torch.Tensor,
                           mouth_reader: PoseReader | None = None) -> None:
        """Make the swap follow what ``reader`` (the pose) and ``mouth_reader`` read by ``directions``
        [K, D], rows in the order ``read_pose`` reads (``swap_latents``)."""
        self.pose_reader, self.mouth_reader = reader, mouth_reader
        self.swap_pose_directions = directions.detach().clone()

    def forward(self, bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The swap: the target's swap latent times the swap gain, moved by the swap latent offset and,
        with pose_follow, by its pose (``swap_latents``), through the base decoder (the bottleneck's
        second linear, in the shared set too, at the same strength)."""
        with shared_delta_scaled(self, self.adapter.swap_strength):
            latent = self.latent(bgr)
            pose = None if self.swap_pose_directions is None else self.read_pose(bgr, latent)
            latent = swap_latents(latent, self.adapter.swap_gain, self.swap_latent_offset, pose, self.swap_pose_directions)
            return self.paint_swap(latent)

    def paint_swap(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The face (BGR, mask logits) the base decoder paints from swap latents [N, D] (the bottleneck's
        second linear first); call it under the swap strength's shared delta, as ``forward`` does."""
        return self.identity_decode(self.autoencoder.bottleneck.code_of(latent))

    def read_pose(self, bgr: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """What the swap follows for input ``bgr`` of adapted latent ``latent``, [N, K]: the pose
        (pose_follow: [N, 2] yaw and pitch off the crop, or [N, 1] yaw off the mask the target path
        paints from the latent, as the export does), then the mouth's opening off the crop (mouth_follow)."""
        read = []
        if isinstance(self.pose_reader, MaskYawReadout):
            read.append(self.pose_reader(self.target_mask(latent)))
        elif self.pose_reader is not None:
            read.append(self.pose_reader(bgr))
        if self.mouth_reader is not None:
            read.append(self.mouth_reader(bgr))
        return torch.cat(read, 1)

    def target_mask(self, latent: torch.Tensor) -> torch.Tensor:
        """[N, 1, S, S] mask logits the target path paints from adapted latents [N, D]."""
        return self.target_decode(self.autoencoder.bottleneck.code_of(latent))[1]


def is_shared_lora_b(name: str) -> bool:
    """The shared set's LoRA B tensors (the delta of a layer is B·A, linear in B)."""
    return name.startswith(AUTOENCODER_PREFIX) and ".lora_B." in name


@contextmanager
def shared_delta_scaled(model: PairModel, strength: float):
    """Within: the shared delta at ``strength`` of its trained size (its B tensors scaled in place,
    put back after). For reading, not training: no gradient passes through the scaling."""
    if strength == 1:
        yield model
        return
    tensors = [p for n, p in model.named_parameters() if is_shared_lora_b(n)]
    saved = [t.detach().clone() for t in tensors]
    with torch.no_grad():
        for tensor in tensors:
            tensor.mul_(strength)
    try:
        yield model
    finally:
        with torch.no_grad():
            for tensor, original in zip(tensors, saved):
                tensor.copy_(original)


POSE_NEIGHBOURS = 8  # identity faces each target face picks for the swap latent offset


def pose_matched_weights(identity_poses: np.ndarray, target_poses: np.ndarray,
                         neighbours: int = POSE_NEIGHBOURS) -> np.ndarray:
    """[N_identity] weights summing to 1 that give the identity's faces the target's pose
    distribution: each target face shares its weight among its ``neighbours`` identity faces nearest
    in pose (rows of [yaw, pitch] in degrees; ties go to the earlier face)."""
    identity_poses = np.asarray(identity_poses, dtype=np.float64)
    target_poses = np.asarray(target_poses, dtype=np.float64)
    if not len(identity_poses) or not len(target_poses):
        raise ValueError(f"pose matching needs faces on both sides, got {len(identity_poses)} identity and "
                         f"{len(target_poses)} target poses")
    count = min(neighbours, len(identity_poses))
    distances = np.linalg.norm(target_poses[:, None, :] - identity_poses[None, :, :], axis=2)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :count]
    weights = np.bincount(nearest.ravel(), minlength=len(identity_poses)).astype(np.float64)
    return weights / weights.sum()


@torch.no_grad()
def swap_latents_of(model: PairModel, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """``PairModel.swap_latent`` of images [N, 3, S, S], in batches, in eval mode."""
    model.eval()
    return torch.cat([model.swap_latent(images[i:i + batch]) for i in range(0, len(images), batch)])


def pose_directions(latents: torch.Tensor, poses: np.ndarray) -> torch.Tensor:
    """[K, D]: how the latents [N, D] move per unit of each measure (poses [N, K]: yaw and pitch in
    degrees, and the mouth's opening), by least squares on [1, yaw, pitch, ...]."""
    design = torch.cat([torch.ones(len(poses), 1, dtype=torch.float64), torch.from_numpy(np.asarray(poses, dtype=np.float64))], 1)
    return torch.linalg.lstsq(design, latents.double()).solution[1:].to(latents.dtype)


@torch.no_grad()
def set_swap_offset(model: PairModel, identity_images: torch.Tensor, target_images: torch.Tensor,
                    identity_weights: np.ndarray | None = None, batch: int = 32) -> torch.Tensor:
    """Store (and return) the swap latent offset: the mean swap latent (``PairModel.swap_latent``) of
    ``identity_images`` (weighted by ``identity_weights``, summing to 1; None: all alike) minus that
    of ``target_images`` (the training faces; [N, 3, S, S] BGR in [0, 1]) times the swap gain: the
    swaps of the target's faces are then spread about the identity's mean. With pose_follow, call
    ``set_pose_follow`` after it: it moves the offset by the target's mean pose."""
    identity, target = swap_latents_of(model, identity_images, batch), swap_latents_of(model, target_images, batch)
    identity_mean = identity.mean(0) if identity_weights is None else (
        torch.from_numpy(np.asarray(identity_weights)).to(identity) @ identity)
    offset = identity_mean - model.adapter.swap_gain * target.mean(0)
    model.swap_latent_offset.copy_(offset)
    return offset


def set_pose_follow(model: PairModel, identity_latents: torch.Tensor, identity_measures: np.ndarray,
                    target_images: torch.Tensor, target_measures: np.ndarray, seed: int = 0, batch: int = 32,
                    turned: tuple[torch.Tensor, np.ndarray] | None = None,
                    target_points: np.ndarray | None = None) -> torch.Tensor:
    """With ``adapter.pose_follow`` or ``adapter.mouth_follow`` > 0, after ``set_swap_offset``: learn
    to read the target's pose and the mouth's opening and attach them with the latent steps, so that
    each swap latent moves by pose_follow times the step per degree of the pose read off its input
    and by mouth_follow times the step per unit of the opening. ``target_measures``: the target's
    training faces' [N, 3, S, S] yaw, pitch (degrees) and mouth's opening [N, 3] as FaceMesh reads
    them on each crop (``pose.crop_measures``; NaN rows are left out); ``identity_latents``: the swap
    latents (``swap_latents_of``) of the identity's faces of ``identity_measures`` (their mirror images
    and turned copies give it poses its media lack). ``turned``: the
    target's turned copies and their poses (``pose.turned_crops``), which the pose reader learns from
    beside its faces (the directions and the centre stay the target's own faces'); ``target_points``:
    the six pose points FaceMesh finds on each of the target's faces [N, 12] (``pose.crop_readings``),
    which the "crop" reading learns.

    ``adapter.pose_reading`` "crop": a PointPoseReader reads yaw and pitch off the target's crops
    through their six pose points; the step is the identity's own pose directions [2, D]. "mask": a MaskYawReadout learns yaw off
    the masks the target path paints for the target's faces and their mirror images; the step [1, D]
    is the identity's yaw direction less the swap gain times the target's, so the target's own turn,
    which the identity decoder reads only in part, is taken off before the identity's is added. The
    mouth: a PoseReader of one output learns the opening off the target's crops; the step [1, D] is
    the identity's direction of the opening (fitted beside its yaw and pitch). The offset gives up
    the target's mean pose's and opening's share, so a face at the target's mean pose and opening
    still lands on the identity's mean. Returns the steps [K, D], rows in ``read_pose``'s order."""
    follow, mouth = model.adapter.pose_follow, model.adapter.mouth_follow
    if not (follow > 0 or mouth > 0):
        raise ValueError("set_pose_follow: the adapter's pose_follow and mouth_follow are 0, so the swap follows nothing")
    identity_measures = np.asarray(identity_measures, dtype=np.float64)
    target_measures = np.asarray(target_measures, dtype=np.float64)
    known = np.isfinite(target_measures).all(axis=1)
    reader, mouth_reader, steps, centres = None, None, [], []
    if follow > 0:
        identity = pose_directions(identity_latents, identity_measures[:, :2])
        reader = pose_reader_of(model, model.adapter.pose_reading, target_images, target_measures[:, :2], seed, batch, turned,
                                target_points)
        if model.adapter.pose_reading == "mask":
            target = pose_directions(swap_latents_of(model, target_images[torch.from_numpy(known)], batch),
                                     target_measures[known, :2])
            steps.append(follow * (identity - model.adapter.swap_gain * target)[:1])
            centres.append(target_measures[known, :1].mean(axis=0))
        else:
            steps.append(follow * identity)
            centres.append(target_measures[known, :2].mean(axis=0))
    if mouth > 0:
        mouth_reader = train_pose_reader(target_images, target_measures[:, 2:], seed, mirror=kept)
        steps.append(mouth * pose_directions(identity_latents, identity_measures)[2:])
        centres.append(target_measures[known, 2:].mean(axis=0))
    directions = torch.cat(steps)
    with torch.no_grad():
        model.swap_latent_offset.sub_(torch.from_numpy(np.concatenate(centres)).to(directions) @ directions)
    model.attach_pose_follow(reader, directions, mouth_reader)
    return directions


@torch.no_grad()
def mouth_step_faces(model: PairModel, identity_latents: torch.Tensor, identity_measures: np.ndarray,
                     target_images: torch.Tensor, span: float, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The swaps of ``target_images`` [N, 3, S, S] painted with the mouth step ``set_pose_follow``
    would add (mouth_follow times the identity's direction of the mouth's opening, fitted beside
    its yaw and pitch on the swap latents ``identity_latents`` of its faces of ``identity_measures``
    [M, 3]) at half ``span`` of the opening below and above the swap latent (gain·latent + offset):
    two [N, 3, S, S] BGR faces in [0, 1], what the step paints over a target's range of the opening."""
    model.eval()
    step = model.adapter.mouth_follow * pose_directions(identity_latents, np.asarray(identity_measures, dtype=np.float64))[2]
    below, above = [], []
    with shared_delta_scaled(model, model.adapter.swap_strength):
        for start in range(0, len(target_images), batch):
            latent = swap_latents(model.latent(target_images[start:start + batch]), model.adapter.swap_gain,
                                  model.swap_latent_offset)
            for faces, side in ((below, -0.5), (above, 0.5)):
                faces.append(model.paint_swap(latent + side * span * step)[0])
    return torch.cat(below), torch.cat(above)


def pose_reader_of(model: PairModel, reading: str, target_images: torch.Tensor, target_poses: np.ndarray, seed: int = 0,
                   batch: int = 32, turned: tuple[torch.Tensor, np.ndarray] | None = None,
                   target_points: np.ndarray | None = None) -> PointPoseReader | MaskYawReadout:
    """The reader ``set_pose_follow`` attaches for ``reading``: "crop", a PointPoseReader trained on the
    target's faces [N, 3, S, S] against the six pose points FaceMesh finds on each (``target_points``
    [N, 12], NaN rows left out); "mask", a MaskYawReadout fitted on the masks the target path paints
    for them (of poses [N, 2]) and their mirror images, and on ``turned`` (the target's turned copies
    and their poses, ``pose.turned_crops``) too."""
    if reading != "mask":
        if target_points is None or turned is not None:
            raise ValueError("the pose read off the crop learns the target's own faces and their six pose points "
                             "(target_points), not turned copies")
        return train_point_pose_reader(target_images, target_points, seed)
    known = np.isfinite(np.asarray(target_poses, dtype=np.float64)).all(axis=1)
    images, poses = target_images[torch.from_numpy(known)], np.asarray(target_poses, dtype=np.float64)[known]
    if turned is not None:
        images, poses = torch.cat([images, turned[0]]), np.concatenate([poses, turned[1]])
    faces, labels = mirror_images(images, poses)
    return fit_mask_yaw_readout(target_path_masks(model, faces, batch), labels[:, 0])


@torch.no_grad()
def target_path_masks(model: PairModel, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """[N, 1, S, S] mask logits the target path paints for images [N, 3, S, S] from the latent the
    swap reads (the shared delta at the swap strength, as in the export), in eval mode."""
    model.eval()
    with shared_delta_scaled(model, model.adapter.swap_strength):
        return torch.cat([model.target_mask(model.latent(images[i:i + batch])) for i in range(0, len(images), batch)])


def adapter_state(model: PairModel) -> dict[str, torch.Tensor]:
    """The LoRA tensors of both sets and the swap latent offset, named as in ``model.state_dict()``."""
    return {name: tensor for name, tensor in model.state_dict().items() if is_saved_tensor(name)}


def base_state(model: PairModel) -> dict[str, torch.Tensor]:
    """The frozen base weights inside a PairModel, under the identity model's own names (peft
    keeps a wrapped layer's weights in ``<layer>.base_layer``)."""
    return {
        name[len(AUTOENCODER_PREFIX):].replace(".base_layer.", "."): tensor
        for name, tensor in model.state_dict().items()
        if name.startswith(AUTOENCODER_PREFIX) and not is_saved_tensor(name)
    }


def adapter_counts(model: PairModel) -> dict[str, float]:
    return {
        "base_parameters": model.base_parameters,
        "adapter_parameters": model.adapter_parameters,
        "adapter_share": model.adapter_share,
    }

def saved_readers(tensors: Mapping[str, torch.Tensor], size: int) -> tuple[PointPoseReader | MaskYawReadout | None, PoseReader | None]:
    """Empty readers of the kinds saved in an adapter's ``tensors`` (for its tensors to load into):
    the pose's (pose_follow) and the mouth's (mouth_follow), None where it has none."""
    readout = tensors.get(POSE_READER_PREFIX + "weights")
    pose = (MaskYawReadout(readout.shape[0]) if readout is not None
            else PointPoseReader.empty(size) if POSE_READER_PREFIX + "points.head.weight" in tensors else None)
    mouth = PoseReader(size, outputs=1) if MOUTH_READER_PREFIX + "head.weight" in tensors else None
    return pose, mouth


def load_adapter_tensors(model: PairModel, tensors: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Put saved LoRA tensors (and, from an adapter with pose_follow or mouth_follow, its readers
    and directions) into a PairModel; refuses a file that does not match it."""
    if SWAP_POSE_DIRECTIONS in tensors and model.swap_pose_directions is None:
        reader, mouth_reader = saved_readers(tensors, model.model_config.size)
        model.attach_pose_follow(reader, tensors[SWAP_POSE_DIRECTIONS], mouth_reader)
    expected = set(adapter_state(model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
        raise ValueError(
            f"{source} does not match this pair model (missing {missing}, unexpected {extra}); "
            "was it trained with another rank or model config?"
        )
    model.load_state_dict(dict(tensors), strict=False)


# ---------------------------------------------------------------------------------------------
# Adapter files


def adapter_description(model: PairModel, identity_weights_sha256: str, adapter_sha256: str) -> dict:
    return {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "adapter_config": model.adapter.to_dict(),
        "adapters": {
            SHARED_ADAPTER: {
                "parts": list(SHARED_PARTS),
                "tensor_prefix": AUTOENCODER_PREFIX,
                "target_modules": model.shared_modules,
                "use": "both paths; merged into the exported swap model's encoder",
            },
            TARGET_ADAPTER: {
                "parts": ["decoder"],
                "tensor_prefix": TARGET_DECODER_PREFIX,
                "target_modules": model.target_modules,
                "use": "target reconstruction path only (training scaffold; its mask head gives the input face mask)",
            },
        },
        "base": {
            "model": "IdentityAutoencoder",
            "model_config": model.model_config.to_dict(),
            "weights_sha256": identity_weights_sha256,
            "parameters": model.base_parameters,
        },
        "adapter_parameters": model.adapter_parameters,
        "adapter_share": float(f"{model.adapter_share:.6g}"),
        "adapter_sha256": adapter_sha256,
        "peft_version": peft.__version__,
    }


def save_adapter(model: PairModel, identity_weights: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write ``adapter.safetensors`` and ``adapter_config.json`` (deterministic bytes, atomic)."""
    out_dir = Path(out_dir)
    data = weights_to_bytes(adapter_state(model))
    description = adapter_description(model, file_sha256(Path(identity_weights)), hashlib.sha256(data).hexdigest())
    weights_path, config_path = out_dir / ADAPTER_WEIGHTS_FILE, out_dir / ADAPTER_CONFIG_FILE
    atomic_write_bytes(weights_path, data)
    atomic_write_bytes(config_path, (json.dumps(description, sort_keys=True, indent=2) + "\n").encode("utf-8"))
    return weights_path, config_path


@dataclass(frozen=True)
class SavedAdapter:
    tensors: dict[str, torch.Tensor]
    adapter_config: AdapterConfig
    model_config: AutoencoderConfig
    base_weights_sha256: str
    description: dict


def load_adapter(adapter_dir: Path) -> SavedAdapter:
    """Read an adapter written by ``save_adapter``; checks the tensors against the recorded sha256."""
    adapter_dir = Path(adapter_dir)
    weights_path, config_path = adapter_dir / ADAPTER_WEIGHTS_FILE, adapter_dir / ADAPTER_CONFIG_FILE
    for path in (weights_path, config_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; materialize lora_adapter for this pair first")
    description = json.loads(config_path.read_text(encoding="utf-8"))
    if description.get("format") != ADAPTER_FORMAT or description.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise ValueError(f"{config_path} is not a {ADAPTER_FORMAT} v{ADAPTER_FORMAT_VERSION} adapter description")
    if file_sha256(weights_path) != description["adapter_sha256"]:
        raise ValueError(f"{weights_path} does not match the sha256 in {config_path}; the adapter files are corrupt or mixed")
    tensors = safetensors.torch.load_file(str(weights_path))
    return SavedAdapter(
        tensors=tensors,
        # Adapters saved before swap_strength, swap_gain and pose_follow existed were merged whole, at
        # gain 1, with no pose map.
        adapter_config=AdapterConfig(**{"swap_strength": 1.0, "swap_gain": 1.0, "pose_follow": 0.0,
                                        **description["adapter_config"]}),
        model_config=AutoencoderConfig(**description["base"]["model_config"]),
        base_weights_sha256=description["base"]["weights_sha256"],
        description=description,
    )


# ---------------------------------------------------------------------------------------------
# Merged swap model


class TargetFaceMask(nn.Module):
    """NCHW BGR [0, 1] → [N, 1, S, S] mask probability of the input (target) face: the merged
    shared encoder and the merged target-path decoder's mask head."""

    def __init__(self, encoder: nn.Module, bottleneck: nn.Module, target_decoder: nn.Module):
        super().__init__()
        self.encoder, self.bottleneck, self.target_decoder = encoder, bottleneck, target_decoder

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        _, logits = self.target_decoder(self.bottleneck(self.encoder(bgr)))
        return torch.sigmoid(logits)


class TargetLatent(nn.Module):
    """NCHW BGR [0, 1] → [N, latent_dim]: the merged encoder and the target path's first
    bottleneck linear (no swap latent offset); with readers off the crop (pose_follow's CNN,
    mouth_follow's), (that latent, what they read [N, K], in their order) for the MorphingDecoder."""

    def __init__(self, encoder: nn.Module, bottleneck: nn.Module, crop_readers: tuple[nn.Module, ...] = ()):
        super().__init__()
        self.encoder, self.bottleneck, self.crop_readers = encoder, bottleneck, nn.ModuleList(crop_readers)

    def forward(self, bgr: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        latent = self.bottleneck.to_latent(self.encoder(bgr).flatten(1))
        if not len(self.crop_readers):
            return latent
        return latent, torch.cat([reader(bgr) for reader in self.crop_readers], 1)


class BlendedConv2d(nn.Module):
    """A conv whose weights are base + share·(target − base), ``share`` a [1] tensor set by its
    MorphingDecoder for each call."""

    def __init__(self, base: nn.Conv2d, target: nn.Conv2d):
        super().__init__()
        self.conv = base
        self.register_buffer("weight_delta", (target.weight - base.weight).detach())
        self.register_buffer("bias_delta", (target.bias - base.bias).detach())
        self.share: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.share is None:
            raise RuntimeError("BlendedConv2d runs only inside MorphingDecoder.forward, which sets its share")
        return self.conv._conv_forward(x, self.conv.weight + self.share * self.weight_delta,
                                       self.conv.bias + self.share * self.bias_delta)


class MorphingDecoder(nn.Module):
    """(target-path latent [N, D] (with readers off the crop: and what they read [N, K]), morph [1]) →
    (BGR [0, 1], mask logits): the DFM export's
    ``morph_value:0``. Morph 1 is the swap (``swap_latents`` of the latent, base decoder), 0 the
    target path (the latent as it is, the decoder with Δtarget merged: the target's own face);
    in between both move together, latent + m·(swap_latents(latent) − latent) and decoder weights
    base + (1 − m)·Δtarget,
    so a half morph is one face the decoder paints, not two faces cross-faded. (DeepFaceLab's
    morphable models blend the two codes for one shared decoder; ours has a decoder per path,
    and a LoRA delta is linear in its weights, so it is blended too.) In ONNX the blended
    weights are computed from the input and feed the Conv nodes.

    The decoder is a copy of the base decoder with each conv made a BlendedConv2d, so its own
    forward (the wiring) is reused as it is; the share reaches the layers as an attribute set
    for the call (torch.func.functional_call would be tidier, but the ONNX tracer refuses it).
    """

    def __init__(self, bottleneck: nn.Module, swap_latent_offset: torch.Tensor, swap_decoder: nn.Module,
                 target_decoder: nn.Module, swap_gain: float, swap_pose_directions: torch.Tensor | None = None,
                 yaw_readout: MaskYawReadout | None = None):
        super().__init__()
        self.bottleneck = bottleneck
        self.yaw_readout = yaw_readout
        self.swap_gain = swap_gain
        self.register_buffer("swap_latent_offset", swap_latent_offset.detach().clone())
        self.register_buffer("swap_pose_directions", None if swap_pose_directions is None
                             else swap_pose_directions.detach().clone())
        self.decoder = copy.deepcopy(swap_decoder)
        targets = dict(target_decoder.named_modules())
        self.blended: list[BlendedConv2d] = []
        for name, module in list(self.decoder.named_modules()):
            if isinstance(module, nn.Conv2d):
                blended = BlendedConv2d(module, targets[name])
                parent_name, _, child = name.rpartition(".")
                setattr(self.decoder.get_submodule(parent_name), child, blended)
                self.blended.append(blended)

    def forward(self, latent: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                morph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        read = []
        if isinstance(latent, tuple):
            latent, off_crop = latent  # what the CNNs read off the crop: TargetLatent hands it over beside the latent
            read.append(off_crop)
        if self.yaw_readout is not None:
            # pose_follow off the mask, read first: the target path's (the decoder at share 1) mask of the latent.
            read.insert(0, self.yaw_readout(self.decoded(self.bottleneck.code_of(latent), torch.ones_like(morph))[1]))
        pose = torch.cat(read, 1) if read else None
        swap = swap_latents(latent, self.swap_gain, self.swap_latent_offset, pose, self.swap_pose_directions)
        return self.decoded(self.bottleneck.code_of(latent + morph * (swap - latent)), 1 - morph)

    def decoded(self, code: torch.Tensor, share: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder with weights base + share·Δtarget on ``code``."""
        for layer in self.blended:
            layer.share = share
        try:
            return self.decoder(code)
        finally:
            for layer in self.blended:
                layer.share = None


@dataclass
class MergedPair:
    """``swap``: plain IdentityAutoencoder, Δshared merged into encoder + bottleneck, base decoder
    — ``swap(x)`` is the swap (without pose_follow's and mouth_follow's move: ``pose_reader``,
    ``mouth_reader`` and ``swap_pose_directions``, None without them, which ``dfm_model`` adds). ``target_face_mask``: the input face's mask (see
    TargetFaceMask), sharing ``swap``'s encoder modules. ``swap_latent_offset`` and ``swap_gain``:
    folded into ``swap``'s bottleneck (kept apart for the morph)."""

    swap: IdentityAutoencoder
    target_face_mask: TargetFaceMask
    swap_latent_offset: torch.Tensor
    swap_gain: float
    pose_reader: PointPoseReader | MaskYawReadout | None = None
    swap_pose_directions: torch.Tensor | None = None
    mouth_reader: PoseReader | None = None

    def dfm_model(self, face_mask_source: nn.Module | None = None, sharpen: float = 0.0,
                  input_blur: float = 0.0, colour_gain: tuple[float, float, float] | None = None) -> DfmSwapModel:
        """The DFM-convention module for facepipe.export.export_dfm, with the ``morph_value:0``
        input (MorphingDecoder; 1, its default, is the swap). ``out_face_mask:0`` comes from
        ``face_mask_source`` (e.g. the target's XSeg), by default from the target path's mask
        head. (The encoder then runs twice in the graph, once per output; it is the cheap half of
        the model.) Outside its mask the face is filled with its own colours (DfmSwapModel's
        ``fill_background``), then given the unsharp mask ``sharpen``; the input crop is first
        low-passed by ``input_blur`` (px; models.swap.INPUT_BLUR_PX); ``colour_gain`` brings the face
        to the target's skin tone (facepipe.skin_tone)."""
        if face_mask_source is None:
            face_mask_source = self.target_face_mask
        target = self.target_face_mask
        # CNNs read the crop beside the encoder; a mask readout reads the target path's mask in the decoder.
        from_mask = isinstance(self.pose_reader, MaskYawReadout)
        crop_readers = tuple(reader for reader in (None if from_mask else self.pose_reader, self.mouth_reader) if reader is not None)
        return DfmSwapModel(TargetLatent(self.swap.encoder, target.bottleneck, crop_readers),
                            MorphingDecoder(target.bottleneck, self.swap_latent_offset, self.swap.decoder, target.target_decoder,
                                            self.swap_gain, self.swap_pose_directions, self.pose_reader if from_mask else None),
                            face_mask_source, takes_morph=True, fill_background=True, sharpen=sharpen,
                            input_blur=input_blur, colour_gain=colour_gain)


def _merged(
    module: nn.Module, lora_config: LoraConfig, adapter_name: str, tensors: Mapping[str, torch.Tensor], prefix: str
) -> nn.Module:
    """peft-wrap a copy of ``module``, load the adapter tensors under ``prefix``, merge_and_unload."""
    wrapped = get_peft_model(copy.deepcopy(module), lora_config, adapter_name=adapter_name)
    inner = wrapped.base_model.model
    own = {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
    expected = {name for name in inner.state_dict() if is_adapter_tensor(name)}
    if set(own) != expected:
        raise ValueError(
            f"adapter tensors under {prefix!r} do not match the {adapter_name!r} LoRA set "
            f"(missing {sorted(expected - set(own))[:3]}, unexpected {sorted(set(own) - expected)[:3]})"
        )
    inner.load_state_dict(own, strict=False)
    merged = wrapped.merge_and_unload(safe_merge=True)  # safe_merge: refuses NaN/inf deltas
    merged.requires_grad_(False)
    return merged.eval()


def merge_adapters(base: IdentityAutoencoder, tensors: Mapping[str, torch.Tensor], adapter: AdapterConfig) -> MergedPair:
    """Merge both LoRA sets into copies of ``base`` (left unchanged)."""
    lora = {name: tensor for name, tensor in tensors.items() if is_adapter_tensor(name)}
    # The swap's encoder takes the shared delta at the swap strength; the target path reads the same
    # encoder (the graph has one), so the morph's far end and the input face's mask do too.
    swap_lora = {name: tensor * adapter.swap_strength if is_shared_lora_b(name) else tensor for name, tensor in lora.items()}
    swap = _merged(base, shared_lora_config(base, adapter), SHARED_ADAPTER, swap_lora, AUTOENCODER_PREFIX)
    target_decoder = _merged(
        base.decoder, target_lora_config(base.decoder, adapter), TARGET_ADAPTER, lora, TARGET_DECODER_PREFIX
    )
    # The target path reads the adapted latent as it is; only the swap's takes the gain and offset
    # (``swap_latents``, affine), folded into its own copy of the bottleneck's first linear.
    target_bottleneck = copy.deepcopy(swap.bottleneck)
    offset, gain = tensors[SWAP_LATENT_OFFSET], adapter.swap_gain
    linear = swap.bottleneck.to_latent
    with torch.no_grad():
        linear.weight.mul_(gain)
        linear.bias.copy_(swap_latents(linear.bias, gain, offset))
    pose_reader, mouth_reader = saved_readers(tensors, base.config.size)
    for reader, prefix in ((pose_reader, POSE_READER_PREFIX), (mouth_reader, MOUTH_READER_PREFIX)):
        if reader is not None:
            reader.load_state_dict({name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)})
            reader.requires_grad_(False).eval()
    directions = tensors.get(SWAP_POSE_DIRECTIONS)
    return MergedPair(swap, TargetFaceMask(swap.encoder, target_bottleneck, target_decoder), offset.clone(), gain,
                      pose_reader, None if directions is None else directions.clone(), mouth_reader)


def merged_swap_model(identity_weights: Path, adapter_dir: Path) -> MergedPair:
    """The merged swap model from the identity model's weights and a saved adapter; refuses an
    adapter trained on other base weights."""
    saved = load_adapter(adapter_dir)
    actual = file_sha256(Path(identity_weights))
    if actual != saved.base_weights_sha256:
        raise ValueError(
            f"{adapter_dir} was trained on identity weights with sha256 {saved.base_weights_sha256[:12]}…, "
            f"but {identity_weights} has {actual[:12]}…; retrain lora_adapter on the current identity_model"
        )
    base = load_identity_model(identity_weights, saved.model_config)
    return merge_adapters(base, saved.tensors, saved.adapter_config)
