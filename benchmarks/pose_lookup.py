"""Would the swap follow the target's turn if it knew the pose? And how surely is the pose read?

The diagnostic behind ``pose_reading`` (docs/swap_quality.md, "The swap at the target's pose,
given it"). Reads pairs that benchmarks/swap_quality.py has built (its --work folder; nothing is
trained but the pose readers) and prints, per pair, on the held-out frames swap_quality evaluates
(cut and sharpened as FaceFusion feeds them, low-passed as the export does):

- how each reader pose_follow can use reads the yaw of those crops, against FaceMesh on the crop
  itself: the reader off the crop (``models.pose.PointPoseReader``, the pair's own or trained as the
  adapter trains it) and the readout off the mask the adapter's target path paints
  (``models.pose.MaskYawReadout``, fitted as the adapter fits it);
- the yaw and pitch of the swaps (FaceMesh on 96 px faces alone, as benchmarks/pose_reach.py reads
  them) against the target's: the pair's swap as built; the same swap with its reader's pose replaced
  by FaceMesh's on each crop (what a perfect reader would give); and the swap whose latent offset is looked
  up at the pose FaceMesh reads on each crop (an oracle no runtime has) — the identity's mean
  latent at that pose (its training faces, mirror images and turned copies, weighted by a Gaussian
  of the pose distance) less the swap gain times the target's mean latent there: how far the
  identity decoder turns when it is told the pose.

    .venv/bin/python benchmarks/pose_lookup.py --work /tmp/facepipe_swap_quality --pairs obama_early/vox

Skips with a message when the dev media or the built pairs are absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import pose_reach
from pose_reach import built_pair, held_out_crops, masks, poses, reach

LOOKUP_SIGMA_DEG = 3.0  # the Gaussian's width over (yaw, pitch); 5 deg blurred vox's turns away


def looked_up(pose, poses_of_faces, latents, sigma: float = LOOKUP_SIGMA_DEG):
    """[N, D] means of ``latents`` [M, D] weighted by a Gaussian of the distance between each pose
    of ``pose`` [N, 2] and ``poses_of_faces`` [M, 2] (degrees)."""
    import torch

    distances = ((pose[:, None, :] - poses_of_faces[None]) ** 2).sum(-1)
    return torch.softmax(-distances / (2 * sigma ** 2), 1) @ latents


def report(store_root: Path, media: Path, identity: str, target: str) -> None:
    import torch

    from facepipe.assets.pair import pose_matched_identity
    from facepipe.evaluate import correlation, facefusion_sharpen
    from facepipe.faces import FaceSet
    from facepipe.models.augment import AugmentConfig, tensors_to_crops
    from facepipe.models.pair import pose_reader_of, shared_delta_scaled, swap_latents, swap_latents_of, target_path_masks
    from facepipe.models.pose import PointPoseReader, crop_poses, crop_readings, turned_crops
    from facepipe.models.swap import INPUT_BLUR_PX, _gaussian_blur
    from facepipe.models.xseg import crops_to_tensor
    from facepipe.store import ArtifactStore
    from facepipe.train.tasks.pair import PairTask

    store = ArtifactStore(store_root)
    identity_model, adapter, saved, _, model = built_pair(store, identity, target)
    config = adapter.record["config"]
    size, gain = saved.model_config.size, model.adapter.swap_gain

    # The faces the adapter's write step sees: the identity's (mirrored, turned) and the target's training faces.
    ident = FaceSet.load(store.current("identity/curated_faces", identity).path)
    targ = FaceSet.load(store.current("target/curated_faces", target).path)
    task = PairTask.from_faces(identity_model.path, ident.crops, ident.masks, targ.crops,
                               np.load(store.current("target/target_masks", target).path / "masks.npy"),
                               config["holdout_every"], config["samples_per_epoch"], saved.adapter_config,
                               AugmentConfig(turn=config["turn"], turn_deg=config["turn_deg"]),
                               identity_landmarks=ident.landmarks, target_landmarks=targ.landmarks)
    mirrored = identity_model.record["config"].get("flip", 0) > 0
    identity_images, identity_measures, _ = pose_matched_identity(task, ident, targ, mirrored)
    identity_poses = identity_measures[:, :2]  # yaw, pitch
    target_images = task.target_images[task.target_train]
    target_measures, target_points = crop_readings(targ.crops[task.target_train.numpy()])  # as the adapter's readers learn them
    target_poses = target_measures[:, :2]
    known = np.isfinite(target_poses).all(axis=1)

    held_out = held_out_crops(media, target, size)
    fed = _gaussian_blur(crops_to_tensor(np.stack([facefusion_sharpen(crop) for crop in held_out])), INPUT_BLUR_PX, edge=True)
    facemesh = crop_poses(held_out)
    read = np.isfinite(facemesh).all(axis=1)

    def painted(bgr: torch.Tensor, logits: torch.Tensor) -> np.ndarray:
        return poses(tensors_to_crops(bgr), masks(logits))

    own_reader = isinstance(model.pose_reader, PointPoseReader)
    rows = task.target_train.numpy()
    turned = turned_crops(targ.crops[rows], np.load(store.current("target/target_masks", target).path / "masks.npy")[rows], size)
    cnn = model.pose_reader if own_reader else pose_reader_of(model, "crop", target_images, target_poses, config["seed"],
                                                              target_points=target_points)
    readout = pose_reader_of(model, "mask", target_images, target_poses, turned=turned)
    fed_masks = target_path_masks(model, fed)
    with torch.no_grad():
        print(f"{identity} -> {target}: {int(read.sum())} held-out frames")
        for name, yaw in ((f"points off the crop{'' if own_reader else ' (trained here)'}", cnn(fed)[:, 0]),
                          ("readout off the target path's mask", readout(fed_masks)[:, 0])):
            yaw = yaw.numpy()
            print(f"  {name} against FaceMesh on the crop: yaw r {correlation(facemesh[read, 0], yaw[read]):.2f} "
                  f"({np.mean(yaw[read] - facemesh[read, 0]):+.1f} deg off on average)")

        own = poses(held_out, masks(fed_masks))
        built = painted(*model(fed))
        print(f"  swap as built (yaw; pitch): {reach(own[:, 0], built[:, 0])}; {reach(own[:, 1], built[:, 1])}")
        if model.pose_reader is not None:  # the pair's own step, its reader replaced by FaceMesh: a perfect reader
            with shared_delta_scaled(model, model.adapter.swap_strength):
                latent = model.latent(fed)
                told = model.read_pose(fed, latent)
                columns = 2 if own_reader else 1  # yaw and pitch off the crop, yaw off the mask
                exact = torch.from_numpy(facemesh[:, :columns]).float()
                told[:, :columns] = torch.where(torch.isfinite(exact), exact, told[:, :columns])
                swap = painted(*model.paint_swap(swap_latents(latent, gain, model.swap_latent_offset, told,
                                                              model.swap_pose_directions)))
            print(f"  swap as built, its reader replaced by FaceMesh on the crop: {reach(own[:, 0], swap[:, 0])}; "
                  f"{reach(own[:, 1], swap[:, 1])}")
        identity_latents = swap_latents_of(model, identity_images)
        target_latents = swap_latents_of(model, target_images)[torch.from_numpy(known)]
        oracle = torch.from_numpy(np.nan_to_num(facemesh)).float()
        offset = (looked_up(oracle, torch.from_numpy(identity_poses).float(), identity_latents)
                  - gain * looked_up(oracle, torch.from_numpy(target_poses[known]).float(), target_latents))
        with shared_delta_scaled(model, model.adapter.swap_strength):
            swap = painted(*model.paint_swap(gain * model.latent(fed) + offset))
        print(f"  swap, its offset looked up at FaceMesh's pose: {reach(own[:, 0], swap[:, 0])}; {reach(own[:, 1], swap[:, 1])}")


def main(argv: list[str] | None = None) -> int:
    return pose_reach.main(argv, report, __doc__)


if __name__ == "__main__":
    sys.exit(main())
