"""How far the swaps of built dev pairs turn with their targets, and where the turn is lost.

Reads pairs that benchmarks/swap_quality.py has built (its --work folder; nothing is trained) and
prints, per pair, the slope and correlation of yaw and pitch read by FaceMesh on 96 px faces
alone (mid-grey outside the model's own mask), for:
- the identity model's reconstructions of the identity's faces and their mirror images, against
  those faces (does the identity model keep the pose at all?);
- the swap and the target path's reconstruction of the target's *training* faces (the crops the
  adapter learnt from), against those faces;
- the same on the held-out frames swap_quality evaluates (a later stretch of the target video),
  cut as FaceFusion cuts them.
A slope under 1 is a swap that turns less than its target. The model runs in torch (the pair
model before export), and the swap is compared with the target's own 96 px face, so these figures
are not swap_quality's yaw r (which reads every face resized to 256 px): they say where the turn
is lost, not how a runtime's output scores.

    .venv/bin/python benchmarks/pose_reach.py --work /tmp/facepipe_swap_quality --pairs kim/mead

Skips with a message when the dev media or the built pairs are absent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from swap_quality import DEFAULT_MEDIA, DEFAULT_WORK, PAIRS, held_out_frames

SAMPLE_FACES = 80  # faces per set, evenly strided: FaceMesh reads each one on its own


def reach(own: np.ndarray, painted: np.ndarray) -> str:
    """'slope s, r c' of the painted faces' angles against their own faces' (degrees)."""
    from facepipe.evaluate import correlation

    keep = np.isfinite(own) & np.isfinite(painted)
    if keep.sum() < 3:
        return "too few faces read"
    slope = np.polyfit(own[keep], painted[keep], 1)[0]
    return (f"slope {slope:.2f}, r {correlation(own[keep], painted[keep]):.2f} "
            f"({np.percentile(own[keep], 5):.1f}..{np.percentile(own[keep], 95):.1f} deg -> "
            f"{np.percentile(painted[keep], 5):.1f}..{np.percentile(painted[keep], 95):.1f})")


def poses(crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[N, 2] yaw and pitch of aligned uint8 crops read alone (NaN where FaceMesh finds no face)."""
    from facepipe.evaluate import crop_landmarks, face_alone, head_pose

    points, _ = crop_landmarks(face_alone(np.ascontiguousarray(crops), masks))
    return head_pose(points, crops.shape[1])[:, :2]


def masks(logits) -> np.ndarray:
    """uint8 masks [N, S, S] of a model's mask logits [N, 1, S, S]."""
    import torch

    return (torch.sigmoid(logits)[:, 0].numpy() * 255).astype(np.uint8)


def built_pair(store, identity: str, target: str):
    """The pair as swap_quality built it in ``store`` (an ArtifactStore): the identity model's and the
    adapter's artifacts, the saved adapter, the identity model alone and the PairModel (both in eval mode)."""
    from facepipe.models.autoencoder import IdentityAutoencoder
    from facepipe.models.pair import PairModel, load_adapter, load_adapter_tensors

    identity_model = store.current("identity/identity_model", identity)
    adapter = store.current("pair/lora_adapter", f"{identity}|{target}")
    saved = load_adapter(adapter.path)
    base = IdentityAutoencoder.from_folder(identity_model.path).eval()  # the identity model alone
    model = PairModel(base, saved.adapter_config)  # its own copy of the base, with both LoRA sets
    load_adapter_tensors(model, saved.tensors, adapter.path)
    return identity_model, adapter, saved, base, model.eval()


def held_out_crops(media: Path, target: str, size: int) -> np.ndarray:
    """The target's held-out frames that swap_quality evaluates, cut at ``size`` px as FaceFusion cuts
    them (frames where MediaPipe finds no face left out)."""
    from facepipe.align import five_points
    from facepipe.evaluate import facefusion_crop
    from facepipe.landmarks import detect_landmarks

    frames = held_out_frames(media, target, 60)
    found = detect_landmarks([(frame, "held-out") for _, frame in frames])
    return np.stack([facefusion_crop(frame, five_points(points), size)[0]
                     for (_, frame), points, ok in zip(frames, found.points, found.detected) if ok])


def report(store_root: Path, media: Path, identity: str, target: str) -> None:
    import torch

    from facepipe.faces import FaceSet, resize_crops
    from facepipe.models.augment import tensors_to_crops
    from facepipe.models.xseg import crops_to_tensor
    from facepipe.store import ArtifactStore

    store = ArtifactStore(store_root)
    _, _, saved, base, model = built_pair(store, identity, target)
    size = saved.model_config.size

    def sample(crops: np.ndarray) -> np.ndarray:
        return crops[np.unique(np.linspace(0, len(crops) - 1, SAMPLE_FACES).round().astype(int))]

    print(f"{identity} -> {target} (yaw; pitch)")
    faces = sample(resize_crops(FaceSet.load(store.current("identity/curated_faces", identity).path).crops, size))
    faces = np.concatenate([faces, faces[:, :, ::-1]])  # and their mirror images, as the model learnt them
    with torch.no_grad():
        bgr, logits = base(crops_to_tensor(faces))  # not model.autoencoder: that one carries the shared LoRA set
    own, painted = poses(faces, masks(logits)), poses(tensors_to_crops(bgr), masks(logits))
    print(f"  identity model, its own faces: {reach(own[:, 0], painted[:, 0])}; {reach(own[:, 1], painted[:, 1])}")

    training = sample(resize_crops(FaceSet.load(store.current("target/curated_faces", target).path).crops, size))
    for name, crops in (("training faces", training), ("held-out frames", held_out_crops(media, target, size))):
        with torch.no_grad():
            x = crops_to_tensor(crops)
            target_bgr, target_logits = model.target_decode(model.encode(x))
            swap_bgr, swap_logits = model(x)
        own = poses(crops, masks(target_logits))
        for path, bgr, logits in (("swap", swap_bgr, swap_logits), ("target path", target_bgr, target_logits)):
            painted = poses(tensors_to_crops(bgr), masks(logits))
            print(f"  {path}, target's {name}: {reach(own[:, 0], painted[:, 0])}; {reach(own[:, 1], painted[:, 1])}")


def is_built(store_root: Path, identity: str, target: str) -> bool:
    from facepipe.store import ArtifactStore, MissingInput

    try:
        ArtifactStore(store_root).current("pair/lora_adapter", f"{identity}|{target}")
    except (MissingInput, FileNotFoundError):
        return False
    return True


def main(argv: list[str] | None = None, report_pair: Callable[[Path, Path, str, str], None] = report,
         description: str = __doc__) -> int:
    """Run ``report_pair`` (store, media, identity, target) on each built dev pair the command line names."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA, help="dev media folder (MANIFEST.md layout)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="swap_quality's --work folder")
    parser.add_argument("--pairs", default="all", help="identity/target,... (default: every built dev pair)")
    args = parser.parse_args(argv)
    if not (args.media / "videos").is_dir():
        print(f"skipped: no dev media at {args.media} (see ../shared/media/MANIFEST.md)")
        return 0
    wanted = [(i, t) for i, t, _ in PAIRS if args.pairs == "all" or f"{i}/{t}" in args.pairs.split(",")]
    built = [(i, t) for i, t in wanted if is_built(args.work / "store", i, t)]
    if not built:
        print(f"skipped: no built dev pair in {args.work} (run benchmarks/swap_quality.py --work {args.work} first)")
        return 0
    for identity, target in built:
        report_pair(args.work / "store", args.media, identity, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
