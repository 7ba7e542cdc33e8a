"""Would an identity decoder told the pose it paints follow a target's turn? (a prototype, offline)

The swap turns by a step along the identity's yaw direction in the latent (``pose_follow``), and
told each frame's pose exactly it still follows vox at only 0.63-0.83 (docs/swap_quality.md, "The
yaw replaced"): the identity decoder paints no further than the identity's faces turn. This trains,
for each dev pair whose faces benchmarks/swap_quality.py has prepared (its --work folder; the
curated faces are enough), an identity model of the demo's size whose decoder is also told the yaw
and pitch to paint (a small MLP of the two, added to the latent), on inputs and targets turned
*apart* by the synthetic head turns (``models.turn``, ±15 deg), each target labelled with what
FaceMesh reads on it, so that the pose it paints comes from what it is told, not from its input.
No discriminator, no adapter, nothing published. It prints (FaceMesh on 96 px faces alone, as
benchmarks/pose_reach.py reads them):

- held-out identity faces painted at each yaw from -40 to 40 deg: the yaw FaceMesh reads (median),
  and, where the pair's identity model is built, that model's latent stepped along its yaw
  direction (fitted on its faces and mirror images) by the same requests;
- the target's held-out frames (cut as FaceFusion cuts them) painted at the pose FaceMesh reads on
  each, against that pose, with the mouth's opening; the built identity model on them as it is and
  stepped to each frame's yaw.

It writes a contact sheet per pair (the frames; told; the built model stepped) into --work, and the
trained model (``pose_told_<identity>_<epochs>.pt``), which a later run reads instead of training again.

    .venv/bin/python benchmarks/pose_told.py --work /tmp/facepipe_swap_quality --pairs obama_early/vox

Skips with a message when the dev media or the prepared faces are absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from pose_reach import held_out_crops, masks, poses, reach
from swap_quality import DEFAULT_MEDIA, DEFAULT_WORK, PAIRS

SIZE = 96  # the demo's identity model
MAX_TURN_DEG = 15.0  # the synthetic turns' reach either way (the identity model's turn_deg)
POSE_SCALE = 30.0  # degrees per unit of the told pose
SWEEP = np.arange(-40.0, 41.0, 10.0)


def turn_labels(images, face_masks, table: np.ndarray) -> np.ndarray:
    """[N, K, 2] yaw and pitch FaceMesh reads on each face [N, 3, S, S] turned by each of a turn
    table's K angles (NaN where a face has no table row or no face is found)."""
    import torch

    from facepipe.models.augment import _base_grid, compose_grids, tensors_to_crops, warp_with_grid

    labels = np.full((len(images), table.shape[1], 2), np.nan)
    rows = np.flatnonzero(np.isfinite(table).all(axis=(1, 2, 3, 4)))
    base = _base_grid(SIZE, SIZE, torch.device("cpu")).unsqueeze(0).expand(len(rows), -1, -1, -1)
    for angle in range(table.shape[1]):
        grid = compose_grids(torch.from_numpy(table[rows, angle]), base)
        turned = tensors_to_crops(warp_with_grid(images[rows], grid, "border"))
        turned_masks = (warp_with_grid(face_masks[rows], grid, "zeros")[:, 0].numpy() * 255).astype(np.uint8)
        labels[rows, angle] = poses(turned, turned_masks)
    return labels


def labels_at(labels: np.ndarray, rows: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """[B, 2] the labels of faces ``rows`` turned by ``degrees`` [B], interpolated between the table's
    angles as the turn grids are (``models.turn.interpolated_grids``, a label being a 1 x 1 grid of 2)."""
    from facepipe.models.turn import interpolated_grids

    return interpolated_grids(labels[rows][:, :, None, None], np.radians(degrees), MAX_TURN_DEG)[:, 0, 0]


def latent_of(autoencoder, bgr):
    """The identity model's latent [N, D] of faces [N, 3, S, S] (encoder, the bottleneck's first linear)."""
    return autoencoder.bottleneck.to_latent(autoencoder.encoder(bgr).flatten(1))


def pose_told_model(seed: int):
    """An identity autoencoder of the demo's size whose decoder is also told the pose [N, 2] (degrees)."""
    import torch
    from torch import nn

    from facepipe.models.autoencoder import AutoencoderConfig, IdentityAutoencoder

    class PoseTold(nn.Module):
        def __init__(self):
            super().__init__()
            self.autoencoder = IdentityAutoencoder(AutoencoderConfig(size=SIZE))
            latent_dim = self.autoencoder.config.latent_dim
            self.pose = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.1), nn.Linear(64, latent_dim))

        def forward(self, bgr, pose):
            code = self.autoencoder.bottleneck.code_of(latent_of(self.autoencoder, bgr) + self.pose(pose / POSE_SCALE))
            return self.autoencoder.decode(code)

    torch.manual_seed(seed)
    return PoseTold()


def train_told(images, face_masks, table: np.ndarray, labels: np.ndarray, rows: np.ndarray, epochs: int, seed: int = 0):
    """The pose-told model trained on faces ``rows``: each input turned by one angle and its target
    by another (each 0 with probability 0.4, else uniform in ±MAX_TURN_DEG), the target's labels told;
    the elastic warp on the input for the first 40 epochs and the same colour jitter on both, as
    the identity model trains; 256 faces an epoch at batch 8, AdamW at 5e-4, the identity model's loss."""
    import torch
    import torch.nn.functional as F

    from facepipe.models.augment import (_base_grid, apply_colour_jitter, compose_grids, elastic_grid,
                                         random_colour_jitter, warp_with_grid)
    from facepipe.models.losses import reconstruction_loss
    from facepipe.models.turn import interpolated_grids

    model = pose_told_model(seed).to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-4)
    generator = torch.Generator().manual_seed(seed)
    batch, device = 8, torch.device("cpu")
    base = _base_grid(SIZE, SIZE, device).unsqueeze(0).expand(batch, -1, -1, -1)

    def angles() -> np.ndarray:
        drawn = (torch.rand(batch, generator=generator, dtype=torch.float64) * 2 - 1) * MAX_TURN_DEG
        return torch.where(torch.rand(batch, generator=generator) < 0.4, torch.zeros_like(drawn), drawn).numpy()

    for epoch in range(epochs):
        started, total = time.perf_counter(), 0.0
        for _ in range(256 // batch):
            picked = rows[torch.randint(len(rows), (batch,), generator=generator).numpy()]
            seen, painted = angles(), angles()
            input_grid = compose_grids(torch.from_numpy(interpolated_grids(table[picked], np.radians(seen), MAX_TURN_DEG)), base)
            target_grid = compose_grids(torch.from_numpy(interpolated_grids(table[picked], np.radians(painted), MAX_TURN_DEG)), base)
            if epoch < 40:
                input_grid = F.grid_sample(input_grid.permute(0, 3, 1, 2), elastic_grid(generator, batch, SIZE, SIZE, device),
                                           align_corners=False, padding_mode="border").permute(0, 2, 3, 1)
            jitter = random_colour_jitter(generator, batch, 0.1, 0.2, 0.1)
            inputs = apply_colour_jitter(warp_with_grid(images[picked], input_grid, "border"), jitter)
            targets = apply_colour_jitter(warp_with_grid(images[picked], target_grid, "border"), jitter)
            target_masks = warp_with_grid(face_masks[picked], target_grid, "zeros")
            told = torch.from_numpy(labels_at(labels, picked, painted)).float()
            bgr, logits = model(inputs.contiguous(memory_format=torch.channels_last), told)
            loss, _ = reconstruction_loss(bgr, logits, targets, target_masks)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
        if epoch % 25 == 0 or epoch == epochs - 1:
            print(f"  epoch {epoch}: loss {total / (256 // batch):.4f} ({time.perf_counter() - started:.1f} s)", flush=True)
    return model.eval()


def report(work: Path, media: Path, identity: str, target: str, epochs: int) -> None:
    import cv2
    import torch

    from facepipe.align import hull_mask
    from facepipe.evaluate import correlation, crop_landmarks, face_alone, mouth_opening
    from facepipe.faces import FaceSet, holdout_split, resize_crops
    from facepipe.models.augment import faces_to_tensors, tensors_to_crops
    from facepipe.models.autoencoder import IdentityAutoencoder
    from facepipe.models.turn import crops_mesh, turn_table
    from facepipe.store import ArtifactStore, MissingInput

    store = ArtifactStore(work / "store")
    faces = FaceSet.load(store.current("identity/curated_faces", identity).path)
    crops = np.concatenate([faces.crops, faces.crops[:, :, ::-1]])  # and their mirror images
    hulls = np.concatenate([faces.masks, faces.masks[:, :, ::-1]])
    images, face_masks = faces_to_tensors(resize_crops(crops, SIZE), resize_crops(hulls, SIZE))
    started = time.perf_counter()
    table = turn_table(crops_mesh(crops, SIZE), MAX_TURN_DEG, SIZE)
    labels = turn_labels(images, face_masks, table)
    usable = np.isfinite(labels).all(axis=(1, 2))
    print(f"{identity} -> {target}: {len(faces.crops)} identity faces (and mirror images), turn tables and labels in "
          f"{time.perf_counter() - started:.0f} s; the table's turns read "
          f"{np.round(np.nanmedian(labels[:, :, 0], axis=0), 1).tolist()} deg (median)", flush=True)
    train_idx, held_idx = holdout_split(len(faces.crops), 10)
    train_rows = np.concatenate([train_idx, train_idx + len(faces.crops)])
    train_rows, held = train_rows[usable[train_rows]], held_idx[usable[held_idx]]
    saved = work / f"pose_told_{identity}_{epochs}.pt"  # the trained model, read again by a later run
    if saved.exists():
        model = pose_told_model(0)
        model.load_state_dict(torch.load(saved))
        model.eval()
        print(f"  the pose-told model of {saved}", flush=True)
    else:
        started = time.perf_counter()
        model = train_told(images, face_masks, table, labels, train_rows, epochs)
        torch.save(model.state_dict(), saved)
        print(f"  trained {epochs} epochs in {time.perf_counter() - started:.0f} s", flush=True)

    try:
        built = IdentityAutoencoder.from_folder(store.current("identity/identity_model", identity).path).eval()
    except (MissingInput, FileNotFoundError):
        built = None

    def read(bgr, logits) -> np.ndarray:
        return poses(tensors_to_crops(bgr), masks(logits))

    def built_stepped(x, own_yaw, yaw):
        latent = latent_of(built, x) + direction * torch.from_numpy(np.asarray(yaw - own_yaw, dtype=np.float32))[:, None]
        return built.decode(built.bottleneck.code_of(latent))

    with torch.no_grad():
        own = labels[held, labels.shape[1] // 2]
        if built is not None:  # the built model's yaw direction and a ridge readout of yaw, on its training faces
            latents = latent_of(built, images[train_rows]).double()
            unturned = torch.from_numpy(labels[train_rows, labels.shape[1] // 2]).double()
            design = torch.cat([torch.ones(len(latents), 1, dtype=torch.float64), unturned], 1)
            direction = torch.linalg.lstsq(design, latents).solution[1].float()
            readout_design = torch.cat([latents, torch.ones(len(latents), 1, dtype=torch.float64)], 1)
            readout = torch.linalg.solve(readout_design.T @ readout_design + 0.1 * torch.eye(readout_design.shape[1], dtype=torch.float64),
                                         readout_design.T @ unturned[:, 0])
        told_read, stepped_read = [], []
        for yaw in SWEEP:
            pose = torch.from_numpy(np.column_stack([np.full(len(held), yaw), own[:, 1]])).float()
            told_read.append(np.nanmedian(read(*model(images[held], pose))[:, 0]))
            if built is not None:
                stepped_read.append(np.nanmedian(read(*built_stepped(images[held], own[:, 0], yaw))[:, 0]))
        print(f"  identity's held-out faces asked for yaw {SWEEP.astype(int).tolist()} deg:")
        print(f"    told: {np.round(told_read, 1).tolist()}")
        if built is not None:
            print(f"    built identity model, latent stepped: {np.round(stepped_read, 1).tolist()}")

        frames = held_out_crops(media, target, SIZE)  # cut at the model's size, as FaceFusion cuts them
        x = faces_to_tensors(frames, np.zeros(frames.shape[:3], np.uint8))[0]
        points, _ = crop_landmarks(frames)
        found = np.isfinite(points).all(axis=(1, 2))
        x, frames, points = x[found], frames[found], points[found]
        # read alone through the hull of its FaceMesh points, as the turned faces were labelled and the painted ones are read
        frame_pose = poses(frames, np.stack([hull_mask(face_points, SIZE) for face_points in points]))
        frame_mouth = mouth_opening(points)
        known = np.isfinite(frame_pose).all(axis=1)
        x, frames, frame_pose, frame_mouth = x[known], frames[known], frame_pose[known], frame_mouth[known]
        outputs = {"told the frame's pose": model(x, torch.from_numpy(frame_pose).float())}
        if built is not None:
            read_yaw = (torch.cat([latent_of(built, x).double(), torch.ones(len(x), 1, dtype=torch.float64)], 1) @ readout).numpy()
            outputs["built identity model"] = built(x)
            outputs["built, stepped to the frame's yaw"] = built_stepped(x, read_yaw, frame_pose[:, 0])
        print(f"  {target}'s {len(x)} held-out frames, yaw {np.percentile(frame_pose[:, 0], 5):.1f}.."
              f"{np.percentile(frame_pose[:, 0], 95):.1f} deg (yaw; pitch; mouth r):")
        for name, (bgr, logits) in outputs.items():
            painted = read(bgr, logits)
            painted_points, _ = crop_landmarks(face_alone(tensors_to_crops(bgr), masks(logits)))
            mouth = mouth_opening(painted_points)
            keep = np.isfinite(mouth) & np.isfinite(frame_mouth)
            print(f"    {name}: {reach(frame_pose[:, 0], painted[:, 0])}; {reach(frame_pose[:, 1], painted[:, 1])}; "
                  f"mouth r {correlation(frame_mouth[keep], mouth[keep]):.2f}")
        picked = np.unique(np.linspace(0, len(x) - 1, 8).round().astype(int))
        sheet = [np.concatenate(list(frames[picked]), axis=1)]
        for name, (bgr, _) in outputs.items():
            if name != "built identity model":
                sheet.append(np.concatenate(list(tensors_to_crops(bgr[picked])), axis=1))
        path = work / f"pose_told_{identity}_{target}.png"
        cv2.imwrite(str(path), np.concatenate(sheet, axis=0))
        print(f"  sheet: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA, help="dev media folder (MANIFEST.md layout)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="swap_quality's --work folder")
    parser.add_argument("--pairs", default="obama_early/vox", help="identity/target,... (default: obama_early/vox)")
    parser.add_argument("--epochs", type=int, default=150, help="the pose-told model's epochs (the demo's)")
    args = parser.parse_args(argv)
    if not (args.media / "videos").is_dir():
        print(f"skipped: no dev media at {args.media} (see ../shared/media/MANIFEST.md)")
        return 0
    import torch

    from facepipe.store import ArtifactStore, MissingInput
    from facepipe.train.device import flush_denormals

    torch.set_num_threads(2)
    flush_denormals()
    store = ArtifactStore(args.work / "store")
    for identity, target, _ in PAIRS:
        if f"{identity}/{target}" not in args.pairs.split(","):
            continue
        try:
            store.current("identity/curated_faces", identity)
        except (MissingInput, FileNotFoundError):
            print(f"skipped {identity}/{target}: no curated faces of {identity} in {args.work} "
                  f"(run benchmarks/swap_quality.py --work {args.work} --pairs {identity}/{target} first)")
            continue
        report(args.work, args.media, identity, target, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
