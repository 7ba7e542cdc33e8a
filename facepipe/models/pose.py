"""Reading a face's head pose off its crop: the pose the swap follows (``AdapterConfig.pose_follow``).

The adapted encoder carries the target's turn along latent directions the identity decoder hardly
reads, so the swap turns less than its target (docs/swap_quality.md, "Why yaw stays short"). The
swap can be moved along the identity's own pose directions by the target's pose, but only as
surely as that pose is read. A ridge readout off the adapted latent read obama's held-out frames at
yaw r 0.78-0.83; this small CNN, trained on the target's own training crops (and their mirror
images) against the pose FaceMesh reads on those crops, reads them at 0.88 (pitch 0.98), and it is
part of the exported graph, so every runtime gets it (65k parameters, ~8 M multiply-adds a face at
96 px, an eighth of what the encoder and bottleneck take).

Its labels are FaceMesh's pose of each aligned crop read on the crop itself, as the evaluation reads
every face: the stored landmarks come from the whole (smoothed) frame and give another yaw (r 0.87
against the crop's own on obama's faces, 5 deg apart on average).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.models.augment import homography_grid, random_homography, sharpen, warp_with_grid
from facepipe.train.determinism import seed_global_rngs

POSE_WIDTH = 16  # channels of the first of four stride-2 convolutions (then 2x, 4x, 4x)
POSE_EPOCHS = 30  # passes over the target's crops and their mirror images (~10-40 s on 2 cores)
POSE_BATCH = 32
POSE_LR = 2e-3


class PoseReader(nn.Module):
    """NCHW BGR [0, 1] crops [N, 3, S, S] → [N, 2] yaw and pitch in degrees: four stride-2 3x3
    convolutions, one linear."""

    def __init__(self, size: int, width: int = POSE_WIDTH):
        super().__init__()
        if size % 16:
            raise ValueError(f"PoseReader needs a crop size divisible by 16, got {size}")
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for into, out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(into, out, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * (size // 16) ** 2, 2)
        # The head learns poses about their mean in units of their spread; these give degrees back
        # (set by train_pose_reader once it has learnt).
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("centre", torch.zeros(2))

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(bgr * 2.0 - 1.0).flatten(1)) * self.scale + self.centre


def crop_poses(crops: np.ndarray) -> np.ndarray:
    """[N, 2] yaw and pitch (degrees) FaceMesh reads on each aligned uint8 BGR crop [N, S, S, 3]
    itself, NaN where it finds no face."""
    from facepipe.evaluate import crop_landmarks, head_pose  # evaluate imports MediaPipe

    crops = np.asarray(crops)
    points, _ = crop_landmarks(crops)  # NaN points where no face: head_pose gives NaN there
    return head_pose(points, crops.shape[1])[:, :2]


def mirror_images(images: torch.Tensor, poses: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Faces [N, 3, S, S] with their mirror images after them, and their poses [N, 2] (a mirror
    image turns the other way)."""
    return torch.cat([images, images.flip(-1)]), np.concatenate([poses, poses * np.array([-1.0, 1.0])])


def train_pose_reader(images: torch.Tensor, poses: np.ndarray, seed: int = 0, epochs: int = POSE_EPOCHS) -> PoseReader:
    """A PoseReader trained on faces [N, 3, S, S] (BGR [0, 1]) and their poses [N, 2] (degrees; rows
    with NaN are left out) with their mirror images, each batch moved a little (rotation, scale,
    shift: the runtimes' alignment differs from the faces asset's), half of it sharpened as
    FaceFusion sharpens its input, its light jittered. Deterministic for a seed on one machine."""
    keep = torch.from_numpy(np.isfinite(poses).all(axis=1))
    if int(keep.sum()) < 8:
        raise ValueError(f"a pose reader needs at least 8 faces with a pose, got {int(keep.sum())}; "
                         "FaceMesh found too few faces in the target's crops")
    images, targets = mirror_images(images[keep], np.asarray(poses)[keep.numpy()])
    centre, spread = targets.mean(axis=0), targets.std(axis=0) + 1e-3
    labels = torch.from_numpy((targets - centre) / spread).float()
    seed_global_rngs(seed)
    reader = PoseReader(images.shape[-1])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(reader.parameters(), lr=POSE_LR, weight_decay=1e-4)
    size = images.shape[-1]
    reader.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), POSE_BATCH):
            rows = order[start:start + POSE_BATCH]
            batch = warp_with_grid(images[rows], homography_grid(random_homography(generator, len(rows), 5.0, 0.05, 0.03, 0.0),
                                                                 size, size, images.device), "border")
            sharpened = (torch.rand(len(rows), generator=generator) < 0.5).view(-1, 1, 1, 1)
            batch = torch.where(sharpened, sharpen(batch), batch)
            gain = 1 + 0.2 * (torch.rand(len(rows), 3, 1, 1, generator=generator) - 0.5)
            shift = 0.1 * (torch.rand(len(rows), 1, 1, 1, generator=generator) - 0.5)
            loss = F.smooth_l1_loss(reader(batch * gain + shift), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    reader.scale.copy_(torch.from_numpy(spread).float())
    reader.centre.copy_(torch.from_numpy(centre).float())
    reader.requires_grad_(False)
    return reader.eval()
