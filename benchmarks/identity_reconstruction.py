"""How sharp and how close an identity model's reconstructions of its own held-out faces are.

A quick test of an identity-model lever before the whole graph (benchmarks/swap_quality.py) is
run: one identity video of ../shared/media is prepared through the asset graph (media → ...
→ curated_faces), its identity model's task is built from run config as the asset builds it
(`IdentityModelConfig.task`) and trained by the engine, and the held-out faces are
reconstructed. It prints the held-out masked L1 (the asset's own `holdout_l1`), the sharpness of the reconstructions as a
share of the faces' own (median over faces of `evaluate.sharpness`, both at the model's size),
and how well the reconstructions follow their faces' yaw, pitch and mouth opening (FaceMesh on
both, each brought from the model's size to the benchmark's measuring size alike, the
reconstruction alone on mid-grey outside its own mask as swap_quality.py measures a swap:
correlation and mean absolute yaw error, beside the same figures of a perfect reconstruction: the
original through the same mask): a swap cannot turn more precisely than the identity model paints
its own turns. It writes a sheet (faces above, reconstructions below) to look at.

    .venv/bin/python benchmarks/identity_reconstruction.py --epochs 150                 # demo settings
    .venv/bin/python benchmarks/identity_reconstruction.py --epochs 150 --config fm.yaml --name fm
    # fm.yaml: {ops: {identity__identity_model: {config: {feature_matching_weight: 3.0}}}}

Runs with the same --name continue (the engine resumes its checkpoints; raise --epochs to go
on). Everything is written under --work (default /tmp/facepipe_identity_reconstruction). Skips
with a message when the dev media are absent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from swap_quality import DEFAULT_MEDIA, MEASURE_SIZE, load_run_config, op_config

DEFAULT_WORK = Path("/tmp/facepipe_identity_reconstruction")
SHEET_FACES = 10


def prepared_faces(video: Path, work: Path):
    """The curated face set of `video` as identity partition `dev`, built once into work/store."""
    from dagster import DagsterInstance, materialize

    from facepipe.assets.curation import build_curation_asset
    from facepipe.assets.prep import build_prep_assets
    from facepipe.assets.stage import STORE_INPUT, store_input
    from facepipe.faces import FaceSet
    from facepipe.partitions import PARTITIONS
    from facepipe.resources import FacepipeSettings

    folder = work / "data" / "identities" / "dev"
    if not (folder / video.name).is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copyfile(video, folder / video.name)
    settings = FacepipeSettings(data_root=str(work / "data"), store_root=str(work / "store"))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(PARTITIONS["identity"].name, ["dev"])
    materialize(build_prep_assets("identity") + [build_curation_asset("identity")], instance=instance,
                partition_key="dev", resources={"settings": settings, STORE_INPUT: store_input})  # cache hits after the first
    artifact = settings.store.current("identity/curated_faces", "dev")
    return FaceSet.load(artifact.path), artifact.content_hash


def pose_following(reconstructions: np.ndarray, masks: np.ndarray, originals: np.ndarray) -> dict[str, float | int]:
    """Correlation of the reconstructions' yaw, pitch and mouth opening with the originals' (BGR
    uint8 [N, S, S, 3] at the model's size, both upscaled alike; each reconstruction alone on
    mid-grey outside its mask [N, S, S] in 0..1), and the mean absolute yaw error in degrees, over
    the faces FaceMesh finds in all three; beside them (``copy_*``) the same figures of a perfect
    reconstruction: each original alone through the same mask. The mask alone moves FaceMesh's
    yaw by degrees (on kim's held-out faces, turning over ~10 deg, the copy reads yaw r 0.33), so
    a reconstruction's yaw r means something only against its copy's."""
    import cv2

    from facepipe.evaluate import correlation, crop_landmarks, face_alone, head_pose, mouth_opening

    def measured(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        big = np.stack([cv2.resize(image, (MEASURE_SIZE, MEASURE_SIZE), interpolation=cv2.INTER_CUBIC) for image in images])
        landmarks, found = crop_landmarks(big)
        return head_pose(landmarks, MEASURE_SIZE)[:, :2], mouth_opening(landmarks), found

    (own_pose, own_mouth, own_found) = measured(originals)
    painted, copied = measured(face_alone(reconstructions, masks)), measured(face_alone(originals, masks))
    both = own_found & painted[2] & copied[2]

    def figures(prefix: str, pose: np.ndarray, mouth: np.ndarray) -> dict[str, float]:
        if both.sum() < 3:  # FaceMesh found too few faces (an early model paints none)
            return {f"{prefix}{name}": float("nan") for name in ("yaw_r", "pitch_r", "mouth_r", "yaw_error_deg")}
        return {f"{prefix}yaw_r": round(correlation(pose[both, 0], own_pose[both, 0]), 3),
                f"{prefix}pitch_r": round(correlation(pose[both, 1], own_pose[both, 1]), 3),
                f"{prefix}mouth_r": round(correlation(mouth[both], own_mouth[both]), 3),
                f"{prefix}yaw_error_deg": round(float(np.abs(pose[both, 0] - own_pose[both, 0]).mean()), 2)}

    spread = [round(float(np.percentile(own_pose[both, 0], q)), 1) for q in (5, 95)] if both.sum() >= 3 else None
    return {"faces_measured": int(both.sum()), **figures("", *painted[:2]), **figures("copy_", *copied[:2]),
            "yaw_range_deg": spread}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA, help="dev media folder (MANIFEST.md layout)")
    parser.add_argument("--video", default="kim_7s.mp4", help="the identity's video under <media>/videos")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--config", type=Path, help="run config (YAML/JSON); its identity__identity_model part is used")
    parser.add_argument("--preset", help="a facepipe run-config preset, under --config")
    parser.add_argument("--epochs", type=int, help="identity model epochs (default: the config's)")
    parser.add_argument("--name", default="default", help="run name: same name, same checkpoints")
    args = parser.parse_args(argv)
    video = args.media / "videos" / args.video
    if not video.is_file():
        print(f"identity_reconstruction: no {video} (see ../shared/media/MANIFEST.md); skipped. Pass --media DIR.")
        return 0

    import cv2
    import torch

    from facepipe.assets.identity import IdentityModelConfig
    from facepipe.evaluate import sharpness
    from facepipe.models.augment import tensors_to_crops
    from facepipe.train import train_model
    from facepipe.train.tasks.reconstruction import holdout_l1

    values = op_config(load_run_config(args.preset, args.config), "identity__identity_model")
    if args.epochs is not None:
        values = {**values, "epochs": args.epochs}
    config = IdentityModelConfig(**values)
    work = args.work.resolve()
    face_set, faces_hash = prepared_faces(video, work)
    task = config.task(face_set)
    engine = config.engine_config("auto", alone=True, faces=faces_hash, name=args.name)
    started = time.perf_counter()
    model = train_model(task, engine, work / "runs" / args.name, log=lambda _line: None).model
    seconds = time.perf_counter() - started

    held = task.held_idx
    with torch.no_grad():
        bgr, mask_logits = model(task.images[held])
    faces = task.images[held]
    l1 = holdout_l1(model, faces, task.masks[held], "cpu")  # the asset's held-out metric
    reconstructions, originals = tensors_to_crops(bgr), tensors_to_crops(faces)
    ratio = float(np.median(sharpness(reconstructions) / np.maximum(sharpness(originals), 1e-9)))
    following = pose_following(reconstructions, torch.sigmoid(mask_logits)[:, 0].numpy(), originals)
    result = {"name": args.name, "video": args.video, "epochs": config.epochs, "held_out_faces": len(held),
              "held_out_l1": round(l1, 4), "reconstruction_sharpness": round(ratio, 3), **following,
              "seconds_this_session": round(seconds), "config": values}
    shown = range(min(SHEET_FACES, len(held)))
    sheet = np.concatenate([np.concatenate([originals[i], reconstructions[i]], axis=0) for i in shown], axis=1)
    sheet_path = work / f"sheet_{args.name}.png"
    cv2.imwrite(str(sheet_path), cv2.resize(sheet, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
    print(json.dumps(result))
    print(f"| {args.name} | {config.epochs} | {l1:.4f} | {ratio:.2f} | yaw r {following['yaw_r']:.2f} "
          f"({following['yaw_error_deg']:.1f} deg; copy {following['copy_yaw_r']:.2f}, {following['copy_yaw_error_deg']:.1f} deg) "
          f"| pitch r {following['pitch_r']:.2f} (copy {following['copy_pitch_r']:.2f}) | mouth r {following['mouth_r']:.2f} "
          f"(copy {following['copy_mouth_r']:.2f}) | {seconds:.0f} s |  (sheet: {sheet_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
