"""Turning the painted swap to the target's yaw (``onnx_export``'s ``turn_follow``).

The identity decoder paints a turn only about as far, and as surely, as the identity's own faces
turn (docs/swap_quality.md, "Why yaw stays short"): the swap's yaw follows the target's at a slope
of 0.3-0.8 with a few degrees of scatter, even where the adapted latent carries the target's turn.
The head-turn augmentation (``facepipe.models.turn``) moves an aligned face as if the head had
turned, by a thin-plate spline through its FaceMesh points turned in 3D. The same warp, applied to
the face the decoder painted, turns it the rest of the way: two small pose readers in the graph
(``facepipe.models.pose.PoseReader``) read the yaw of the crop the model is fed and of the face it
painted, and the painted face and its mask are turned by the share ``turn_follow`` of the gap
between them. Both runtimes get it, as it is part of the exported graph.

The warp is that of one face, the median FaceMesh points of the swaps of the target's training
faces (the decoder paints every face of a pair on about the same layout), evaluated at angles up
to ``MAX_TURN_DEG`` either way and fitted per pixel as a quadratic in the angle, so the graph
computes it with a few multiply-adds and one ``GridSample``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.faces import resize_crops
from facepipe.models.augment import _base_grid, compose_grids
from facepipe.models.pose import PoseReader, crop_poses, train_pose_reader
from facepipe.models.turn import crops_mesh, table_angles, turn_table

MAX_TURN_DEG = 20.0  # the warp's reach either way: the head-turn augmentation's 15 and a margin


def turn_fields(points: np.ndarray, size: int, max_deg: float = MAX_TURN_DEG) -> torch.Tensor:
    """[3, S, S, 2] the sampling grid that leaves a ``size`` px crop as it is, and the linear and
    quadratic terms in the angle (radians) of the grids that turn a face with FaceMesh points
    [478, 3] (crop pixels) from it: the grid at angle a is g + a·l + a²·q (least squares over
    ``turn.table_angles(max_deg)``; at a = 0 the crop is read at its own pixel centres)."""
    table = turn_table(np.asarray(points, dtype=np.float64)[None], max_deg, size)[0]
    if not np.isfinite(table).all():
        raise ValueError("turn_fields: the face's points cannot be turned (no face found, or degenerate five points)")
    base = _base_grid(size, size, torch.device("cpu")).unsqueeze(0)
    grids = torch.cat([compose_grids(torch.from_numpy(row)[None], base) for row in table]).double()  # [K, S, S, 2]
    angles = torch.from_numpy(table_angles(max_deg))
    design = torch.stack([angles, angles ** 2], dim=1)  # [K, 2]
    solution = torch.linalg.lstsq(design, (grids - base.double()).reshape(len(angles), -1)).solution  # [2, S*S*2]
    return torch.cat([base, solution.reshape(2, size, size, 2).float()])


def turned(images: torch.Tensor, fields: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Images [N, C, S, S] turned by ``angles`` [N] (radians) through ``turn_fields`` [3, S, S, 2]
    (bilinear, the border repeated)."""
    a = angles.reshape(-1, 1, 1, 1).to(fields.dtype)
    grid = fields[0] + a * fields[1] + a * a * fields[2]
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)


class SwapTurn(nn.Module):
    """(crop fed [N, 3, S, S], painted face [N, 3, S, S], its mask [N, 1, S, S], morph [1]) → the face
    and mask turned by ``share`` of the yaw gap between the crop and the face, as the two readers
    read them, in radians of the warp per degree of read yaw ``radians_per_degree`` (how far FaceMesh
    reads a warped face turn), within ±``MAX_TURN_DEG``, times the morph (0: the target's own
    face, not turned)."""

    def __init__(self, target_reader: PoseReader, swap_reader: PoseReader, fields: torch.Tensor,
                 radians_per_degree: float, share: float, max_deg: float = MAX_TURN_DEG):
        super().__init__()
        self.target_reader, self.swap_reader = target_reader, swap_reader
        self.register_buffer("fields", fields.detach().clone())
        self.gain = float(share * radians_per_degree)
        self.limit = float(np.radians(max_deg))

    def angles(self, bgr: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """[N] the warp's angles (radians) for crops and their painted faces, at morph 1."""
        gap = self.target_reader(bgr)[:, 0] - self.swap_reader(face)[:, 0]
        return (self.gain * gap).clamp(-self.limit, self.limit)

    def forward(self, bgr: torch.Tensor, face: torch.Tensor, mask: torch.Tensor,
                morph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = turned(torch.cat([face, mask], dim=1), self.fields, self.angles(bgr, face) * morph)
        return both[:, :3], both[:, 3:]


def painted_poses(faces: np.ndarray, masks: np.ndarray, size: int) -> np.ndarray:
    """[N, 2] the yaw and pitch (degrees, NaN where none) FaceMesh reads on painted faces [N, S, S, 3] uint8 BGR
    alone (mid-grey outside their masks [N, S, S], as the evaluation reads a swap), at ``size`` px."""
    from facepipe.evaluate import face_alone  # evaluate imports MediaPipe

    return crop_poses(resize_crops(face_alone(faces, masks), size))


def as_images(crops: np.ndarray) -> torch.Tensor:
    """uint8 BGR [N, S, S, 3] → float [N, 3, S, S] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0


def as_crops(images: torch.Tensor) -> np.ndarray:
    """float [N, C, S, S] in [0, 1] → uint8 [N, S, S, C]."""
    return (images.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


CALIBRATION_DEG = 10.0  # the warp's angle either way at which FaceMesh's reading of it is measured


def fit_swap_turn(target_crops: np.ndarray, target_poses: np.ndarray, faces: np.ndarray, masks: np.ndarray,
                  share: float, read_size: int, seed: int = 0) -> SwapTurn:
    """The ``SwapTurn`` of a pair from the target's training faces [N, S, S, 3] (uint8 BGR at the
    model's size, as the pose reader sees them) with their poses [N, 2] (``pose.crop_poses``), and the
    faces [N, S, S, 3] the model paints for them, unturned and unsharpened, with their masks [N, S, S]
    (uint8). Both readers learn FaceMesh's reading (the painted faces read at ``read_size`` px, as the
    evaluation reads them); the warp is that of the painted faces' median points, and how far
    FaceMesh reads a warp turn is measured on the painted faces turned ±``CALIBRATION_DEG``."""
    size = faces.shape[1]
    points = crops_mesh(faces)
    found = np.isfinite(points).all(axis=(1, 2))
    if found.sum() < 8:
        raise ValueError(f"turn_follow: FaceMesh found a face in only {int(found.sum())} of the {len(faces)} swaps "
                         "of the target's training faces; set pair__onnx_export's turn_follow to 0")
    fields = turn_fields(np.median(points[found], axis=0), size)
    face_images, mask_images = as_images(faces), as_images(masks[..., None])
    swap_poses = painted_poses(faces, masks, read_size)
    reads = []
    for degrees in (CALIBRATION_DEG, -CALIBRATION_DEG):
        with torch.no_grad():
            both = turned(torch.cat([face_images, mask_images], dim=1), fields,
                          torch.full((len(faces),), float(np.radians(degrees))))
        reads.append(painted_poses(as_crops(both[:, :3]), as_crops(both[:, 3:])[..., 0], read_size)[:, 0])
    per_degree = (reads[0] - reads[1]) / (2 * CALIBRATION_DEG)
    per_degree = per_degree[np.isfinite(per_degree)]
    if len(per_degree) < 8 or not np.median(per_degree) > 0.1:
        raise ValueError("turn_follow: FaceMesh does not read the warped swaps as turned; set pair__onnx_export's "
                         "turn_follow to 0")
    target_reader = train_pose_reader(as_images(target_crops), target_poses, seed)
    swap_reader = train_pose_reader(face_images, swap_poses, seed)
    return SwapTurn(target_reader, swap_reader, fields, float(np.radians(1.0) / np.median(per_degree)), share)
