"""Reading a face's head pose and mouth off its crop: what the swap follows (``AdapterConfig.pose_follow``,
``mouth_follow``).

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

The same CNN with one output reads the mouth's opening the swap follows (``AdapterConfig.mouth_follow``):
on obama's held-out frames at r 0.93-0.96, where a readout off the adapted latent reads it at 0.6-0.7.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.faces import resize_crops
from facepipe.models.augment import (faces_to_tensors, homography_grid, random_homography, sharpen, tensors_to_crops,
                                     turned_faces, warp_with_grid)
from facepipe.train.determinism import seed_global_rngs

POSE_WIDTH = 16  # channels of the first of four stride-2 convolutions (then 2x, 4x, 4x)
POSE_EPOCHS = 30  # passes over the target's crops and their mirror images (~10-40 s on 2 cores)
POSE_BATCH = 32
POSE_LR = 2e-3


class PoseReader(nn.Module):
    """NCHW BGR [0, 1] crops [N, 3, S, S] → [N, outputs] measures of the face: yaw and pitch in
    degrees (``AdapterConfig.pose_follow``), or the mouth's opening (``mouth_follow``): four
    stride-2 3x3 convolutions, one linear."""

    def __init__(self, size: int, width: int = POSE_WIDTH, outputs: int = 2):
        super().__init__()
        if size % 16:
            raise ValueError(f"PoseReader needs a crop size divisible by 16, got {size}")
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for into, out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(into, out, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * (size // 16) ** 2, outputs)
        # The head learns its measures about their mean in units of their spread; these give degrees
        # (or the mouth's opening) back (set by train_pose_reader once it has learnt).
        self.register_buffer("scale", torch.ones(outputs))
        self.register_buffer("centre", torch.zeros(outputs))

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(bgr * 2.0 - 1.0).flatten(1)) * self.scale + self.centre


def crop_poses(crops: np.ndarray) -> np.ndarray:
    """[N, 2] yaw and pitch (degrees) FaceMesh reads on each aligned uint8 BGR crop [N, S, S, 3]
    itself, NaN where it finds no face."""
    return crop_measures(crops)[:, :2]


def crop_measures(crops: np.ndarray) -> np.ndarray:
    """[N, 3] yaw, pitch (degrees) and the mouth's opening (``evaluate.mouth_opening``) FaceMesh
    reads on each aligned uint8 BGR crop [N, S, S, 3] itself, NaN where it finds no face."""
    return crop_readings(crops)[0]


def crop_readings(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``crop_measures`` and the six points FaceMesh's pose is solved from (``evaluate.POSE_LANDMARKS``)
    on each crop, [N, 12]: x, y of each in units of the crop's side (NaN where it finds no face)."""
    from facepipe.evaluate import POSE_LANDMARKS, crop_landmarks, head_pose, mouth_opening  # evaluate imports MediaPipe

    crops = np.asarray(crops)
    points, _ = crop_landmarks(crops)  # NaN points where no face: head_pose gives NaN there
    measures = np.column_stack([head_pose(points, crops.shape[1])[:, :2], mouth_opening(points)])
    return measures, points[:, POSE_LANDMARKS].reshape(len(crops), -1) / crops.shape[1]


def painted_change(before: torch.Tensor, after: torch.Tensor, size: int) -> np.ndarray:
    """How far faces ``after`` [N, 3, S, S] (BGR [0, 1]) turn and open the mouth past the same faces
    ``before``, as FaceMesh reads each resized to ``size`` (``crop_measures``): [3] the mean change of
    yaw and pitch (degrees) and of the mouth's opening over the faces it reads on both sides; NaN
    where it reads none."""
    def measures(faces: torch.Tensor) -> np.ndarray:
        return crop_measures(resize_crops(tensors_to_crops(faces), size))

    change = measures(after) - measures(before)
    change = change[np.isfinite(change).all(axis=1)]
    return change.mean(axis=0) if len(change) else np.full(3, np.nan)


# The turns (degrees) of the target's turned copies a reader also learns from (``turned_crops``).
READER_TURNS_DEG = (-15.0, -10.0, 10.0, 15.0)


def turned_crops(crops: np.ndarray, masks: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The target's aligned uint8 crops [N, S0, S0, 3] turned by each of READER_TURNS_DEG
    (facepipe.models.turn, at their stored size; masks [N, S0, S0] turn with them), brought to
    ``size``, and the pose FaceMesh reads on each turned crop [M, 2]: faces at poses the target's
    own frames may lack. The mask's readout fitted on vox's training frames alone read his later,
    further-turned frames at yaw r 0.75 and 0.96 in two builds, 13.4 and 10.7 deg short; with these
    copies beside them at 0.91 and 0.92, 7.9 and 3.4 deg short (docs/swap_quality.md, "The readout
    learns turned copies of the target").
    Faces FaceMesh finds no points on, or whose turn cannot be solved, are left out."""
    from facepipe.models.turn import crops_mesh, turn_grids  # turn imports MediaPipe

    crops = np.asarray(crops)
    points = crops_mesh(crops)
    usable = np.flatnonzero(np.isfinite(points).all(axis=(1, 2)))
    if not len(usable):
        return torch.zeros(0, 3, size, size), np.zeros((0, 2))
    images, face_masks = faces_to_tensors(crops[usable], np.asarray(masks)[usable])
    grids = turn_grids(points[usable], np.radians(READER_TURNS_DEG), crops.shape[1])  # NaN where a turn cannot be solved
    turned, poses = [], []
    for column in range(len(READER_TURNS_DEG)):
        faces, _ = turned_faces(images, face_masks, grids[:, column])
        read = crop_poses(tensors_to_crops(faces))
        keep = np.isfinite(grids[:, column]).all(axis=(1, 2, 3)) & np.isfinite(read).all(axis=1)
        turned.append(F.interpolate(faces[torch.from_numpy(keep)], size=(size, size), mode="area"))
        poses.append(read[keep])
    return torch.cat(turned), np.concatenate(poses)


def turned_back(measures: np.ndarray) -> np.ndarray:
    """What a mirror image reads of measures [N, K] whose first column is the yaw: that turns the
    other way; the others (pitch, the mouth's opening) it keeps."""
    return np.asarray(measures) * np.concatenate([[-1.0], np.ones(np.asarray(measures).shape[1] - 1)])


def kept(measures: np.ndarray) -> np.ndarray:
    """Measures a mirror image keeps (the mouth's opening)."""
    return np.asarray(measures)


# The six pose points (evaluate.POSE_LANDMARKS: nose tip, chin, eye outer corners, mouth corners) in
# a mirror image: each eye's and mouth's corner becomes the other's.
MIRRORED_POINTS = [0, 1, 3, 2, 5, 4]


def mirrored_points(points: np.ndarray) -> np.ndarray:
    """The six pose points [N, 12] (``crop_readings``, units of the crop side) in the mirror images."""
    mirrored = np.asarray(points).reshape(len(points), 6, 2)[:, MIRRORED_POINTS].copy()
    mirrored[..., 0] = 1.0 - mirrored[..., 0]
    return mirrored.reshape(len(points), 12)


def mirror_images(images: torch.Tensor, measures: np.ndarray, mirror=turned_back) -> tuple[torch.Tensor, np.ndarray]:
    """Faces [N, 3, S, S] with their mirror images after them, and their measures [N, K], the mirror
    images' as ``mirror`` reads them (``turned_back``, ``kept``, ``mirrored_points``)."""
    return torch.cat([images, images.flip(-1)]), np.concatenate([measures, mirror(measures)])


def in_degrees(module: nn.Module, centre: np.ndarray, spread: np.ndarray) -> nn.Module:
    """A reader that learnt its measures about their ``centre`` in units of their ``spread`` made to
    give them back in their own units (degrees, the opening, the points), frozen, in eval mode."""
    module.scale.copy_(torch.from_numpy(np.asarray(spread)).float())
    module.centre.copy_(torch.from_numpy(np.asarray(centre)).float())
    module.requires_grad_(False)
    return module.eval()


def train_pose_reader(images: torch.Tensor, poses: np.ndarray, seed: int = 0, epochs: int | None = None,
                      mirror=turned_back) -> PoseReader:
    """A PoseReader trained on faces [N, 3, S, S] (BGR [0, 1]) and their measures [N, K] (yaw and
    pitch in degrees, the mouth's opening or the six pose points; rows with NaN are left out) with
    their mirror images (measured as ``mirror`` reads them), each batch moved a little (rotation,
    scale, shift: the runtimes' alignment differs from the faces asset's), half of it sharpened as
    FaceFusion sharpens its input, its light jittered, for ``epochs`` passes (None: POSE_EPOCHS, read when
    called). Deterministic for a seed on one machine."""
    keep = torch.from_numpy(np.isfinite(poses).all(axis=1))
    if int(keep.sum()) < 8:
        raise ValueError(f"a pose reader needs at least 8 faces with a pose, got {int(keep.sum())}; "
                         "FaceMesh found too few faces in the target's crops")
    images, targets = mirror_images(images[keep], np.asarray(poses)[keep.numpy()], mirror)
    centre, spread = targets.mean(axis=0), targets.std(axis=0) + 1e-3
    labels = torch.from_numpy((targets - centre) / spread).float()
    seed_global_rngs(seed)
    reader = PoseReader(images.shape[-1], outputs=targets.shape[1])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(reader.parameters(), lr=POSE_LR, weight_decay=1e-4)
    size = images.shape[-1]
    reader.train()
    for _ in range(POSE_EPOCHS if epochs is None else epochs):
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
    return in_degrees(reader, centre, spread)


POINT_POSE_WIDTH = 128  # hidden units of PointPose's two layers
POINT_POSE_STEPS = 10000  # ~15 s on 2 cores; 3000 read obama's held-out points 0.977 against PnP, 10000 0.997
POINT_POSE_SETS = 40000  # jittered point sets it learns PnP's pose from
POINT_POSE_BATCH = 512


class PointPose(nn.Module):
    """The six pose points [N, 12] (``crop_readings``' order and units) → [N, 2] yaw and pitch in
    degrees as ``evaluate.head_pose`` solves them (PnP on a generic head), which no runtime's graph
    can run: a small MLP learns it (``fit_point_pose``) on the points centred and scaled to unit
    spread, so where the face sits in the crop and its size do not matter."""

    def __init__(self, width: int = POINT_POSE_WIDTH):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 2))
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("centre", torch.zeros(2))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        six = points.reshape(-1, 6, 2)
        centred = six - six.mean(1, keepdim=True)
        unit = centred / centred.pow(2).sum((1, 2), keepdim=True).div(6.0).sqrt()
        return self.net(unit.flatten(1)) * self.scale + self.centre


def fit_point_pose(points: np.ndarray, seed: int = 0, steps: int | None = None) -> PointPose:
    """A PointPose learnt on POINT_POSE_SETS point sets drawn about ``points`` [N, 12] (the target's
    faces' and their mirror images'), each turned ±5° in the image, scaled ±10 %, moved ±4 % of the
    side and each point moved 1-2 % more (expressions, FaceMesh's scatter, the runtimes' cut), labelled
    by ``evaluate.six_point_pose`` as on a 256 px crop, for ``steps`` Adam steps (None: POINT_POSE_STEPS,
    read when called). Deterministic for a seed on one machine."""
    from facepipe.evaluate import six_point_pose  # evaluate imports MediaPipe

    real = np.asarray(points, dtype=np.float64)
    real = np.concatenate([real, mirrored_points(real)])
    real = real[np.isfinite(real).all(axis=1)].reshape(-1, 6, 2)
    if len(real) < 8:
        raise ValueError(f"learning the pose from the points needs at least 8 faces with points, got {len(real)}")
    rng = np.random.default_rng(seed)
    drawn = real[rng.integers(0, len(real), POINT_POSE_SETS)]
    angles = np.radians(rng.uniform(-5.0, 5.0, len(drawn)))
    cos, sin = np.cos(angles), np.sin(angles)
    rotations = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)
    centres = drawn.mean(axis=1, keepdims=True)
    sets = (np.einsum("nij,nkj->nki", rotations, drawn - centres) * rng.uniform(0.9, 1.1, (len(drawn), 1, 1))
            + centres + rng.uniform(-0.04, 0.04, (len(drawn), 1, 2)))
    sets += rng.normal(0.0, 1.0, sets.shape) * np.where(np.arange(len(sets)) % 4 == 0, 0.016, 0.008)[:, None, None]
    poses = six_point_pose(sets * 256.0, 256)[:, :2]
    usable = np.isfinite(poses).all(axis=1)
    inputs = torch.from_numpy(sets[usable].reshape(-1, 12)).float()
    centre, spread = poses[usable].mean(axis=0), poses[usable].std(axis=0) + 1e-3
    labels = torch.from_numpy((poses[usable] - centre) / spread).float()
    seed_global_rngs(seed)
    pose = PointPose()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(pose.parameters(), lr=3e-3)
    for _ in range(POINT_POSE_STEPS if steps is None else steps):
        rows = torch.randint(0, len(inputs), (POINT_POSE_BATCH,), generator=generator)
        loss = F.smooth_l1_loss(pose(inputs[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return in_degrees(pose, centre, spread)


class PointPoseReader(nn.Module):
    """NCHW BGR [0, 1] crops → [N, 2] yaw and pitch (degrees): a PoseReader reads the six pose points
    off the crop, a PointPose solves the pose from them as the evaluation's PnP does. Read this way
    obama's held-out frames read at yaw r 0.88-0.92 over three seeds (0.92 in german_news → obama's
    demo build, 1.8 deg short on average) where the PoseReader learning the yaw itself reads them at
    0.85-0.87 (0.86, 4.8 deg short): FaceMesh's six-point pose is a steep function of where the
    mouth's and eyes' corners sit, which a CNN learns better point by point than as one number
    (docs/swap_quality.md, "The pose read through its six points")."""

    def __init__(self, points: PoseReader, pose: PointPose):
        super().__init__()
        self.points, self.pose = points, pose

    @classmethod
    def empty(cls, size: int) -> PointPoseReader:
        """One to load saved tensors into."""
        return cls(PoseReader(size, outputs=12), PointPose())

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        return self.pose(self.points(bgr))


def train_point_pose_reader(images: torch.Tensor, points: np.ndarray, seed: int = 0) -> PointPoseReader:
    """A PointPoseReader for faces [N, 3, S, S] (BGR [0, 1]) and the six pose points FaceMesh finds on
    each [N, 12] (``crop_readings``; NaN rows are left out), and their mirror images."""
    return PointPoseReader(train_pose_reader(images, points, seed, mirror=mirrored_points),
                           fit_point_pose(points, seed)).eval()


MASK_POOL = 4  # the target path's mask averaged over 4x4 px: 24x24 features at 96 px
MASK_RIDGE = 0.1  # the ridge of the readout, on features in [0, 1]


class MaskYawReadout(nn.Module):
    """The target path's mask logits [N, 1, S, S] → [N, 1] yaw in degrees: a linear readout off the
    mask averaged over MASK_POOL px (``fit_mask_yaw_readout``). Where the outline of the face the
    target path paints sits in the aligned crop tells the turn, and that outline holds on frames the
    adapter never saw: on vox's held-out stretch this reads FaceMesh's yaw at r 0.96 where the CNN
    above reads 0.65, 15 deg off (docs/swap_quality.md, "The swap at the target's pose, given it")."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("weights", torch.zeros(features, 1))
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("yaw_mean", torch.zeros(1))

    def forward(self, mask_logits: torch.Tensor) -> torch.Tensor:
        return (mask_features(mask_logits) - self.feature_mean) @ self.weights + self.yaw_mean


def mask_features(mask_logits: torch.Tensor) -> torch.Tensor:
    """[N, F]: the mask probabilities of logits [N, 1, S, S] averaged over MASK_POOL px."""
    return F.avg_pool2d(torch.sigmoid(mask_logits), MASK_POOL).flatten(1)


def fit_mask_yaw_readout(mask_logits: torch.Tensor, yaws: np.ndarray) -> MaskYawReadout:
    """A MaskYawReadout fitted by ridge regression (float64) on the target path's mask logits
    [N, 1, S, S] of faces and their yaws [N] (degrees; NaN rows left out)."""
    keep = np.isfinite(np.asarray(yaws, dtype=np.float64))
    if int(keep.sum()) < 8:
        raise ValueError(f"a yaw readout needs at least 8 faces with a pose, got {int(keep.sum())}; "
                         "FaceMesh found too few faces in the target's crops")
    features = mask_features(mask_logits[torch.from_numpy(keep)]).double()
    labels = torch.from_numpy(np.asarray(yaws, dtype=np.float64)[keep])[:, None]
    feature_mean, yaw_mean = features.mean(0), labels.mean(0)
    centred = features - feature_mean
    weights = torch.linalg.solve(centred.T @ centred + MASK_RIDGE * torch.eye(centred.shape[1], dtype=torch.float64),
                                 centred.T @ (labels - yaw_mean))
    readout = MaskYawReadout(features.shape[1])
    readout.weights.copy_(weights.float())
    readout.feature_mean.copy_(feature_mean.float())
    readout.yaw_mean.copy_(yaw_mean.float())
    return readout.eval()
