"""Data-preparation throughput on the embedded sample, against a naive baseline in the same run.

Prints frames/s of frame extraction and of landmarking for facepipe and for the naive way
(decode every frame, run static-image FaceMesh on each), and the cached-repeat time of the
whole chain as a fraction of the cold time. Ratios, not absolute times, are what to compare:
the machine is shared and noisy.

    .venv/bin/python benchmarks/prep_throughput.py [--max-frames N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import mediapipe as mp
import pandas as pd
from dagster import DagsterInstance, materialize

from facepipe.assets.prep import build_prep_assets
from facepipe.landmarks import detect_landmarks
from facepipe.media import decode_video, extract_frames, load_image, probe, read_frames, scan_media
from facepipe.partitions import PARTITIONS, ROLE_FOLDERS
from facepipe.resources import FacepipeSettings
from facepipe.sample import IDENTITY_KEY, TARGET_KEY, build_sample

PARTITION_KEYS = {"identity": IDENTITY_KEY, "target": TARGET_KEY}


def naive(folder: Path) -> tuple[int, float, float]:
    """Decode every frame of every file; static FaceMesh on each. (frames, decode s, landmark s)."""
    files, _ = scan_media(folder)
    frames, decode_s, detect_s = 0, 0.0, 0.0
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=4) as mesh:
        for file in files:
            started = time.perf_counter()
            images = list(decode_video(file.path)) if file.kind == "video" else [load_image(file.path)]
            decode_s += time.perf_counter() - started
            started = time.perf_counter()
            for image in images:
                mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            detect_s += time.perf_counter() - started
            frames += len(images)
    return frames, decode_s, detect_s


def facepipe_stages(folder: Path, work: Path, max_frames: int) -> tuple[int, float, float]:
    """facepipe's frames + landmarks stages as plain functions. (frames, extract s, landmark s)."""
    started = time.perf_counter()
    files, _ = scan_media(folder)
    manifest = extract_frames([probe(f) for f in files], max_frames, work / "frames")
    extract_s = time.perf_counter() - started
    started = time.perf_counter()
    detect_landmarks(read_frames(work / "frames", manifest))
    return len(manifest), extract_s, time.perf_counter() - started


def epoch_data_cost(store: Path, key: str, naive_seconds: float, frames: int) -> str:
    """What one training epoch pays for its data: facepipe reads the stored faces array; the
    naive loop decodes and re-detects every frame (its time measured above)."""
    import numpy as np

    from facepipe.faces import FaceSet
    from facepipe.store import ArtifactStore

    faces = FaceSet.load(ArtifactStore(store).current("target/faces", key).path)
    started = time.perf_counter()
    for start in range(0, len(faces), 16):  # batches, as training reads them
        np.ascontiguousarray(faces.crops[start : start + 16]).astype(np.float32)
    ours = time.perf_counter() - started
    return (f"per-epoch data cost (target, {frames} frames): naive decode+detect {naive_seconds:.2f}s, "
            f"facepipe faces.npy read {ours:.4f}s = {naive_seconds / ours:.0f}x less")


def chain_time(data: Path, store: Path, instance: DagsterInstance, run_config: dict) -> float:
    settings = FacepipeSettings(data_root=str(data), store_root=str(store))
    started = time.perf_counter()
    for role, key in PARTITION_KEYS.items():
        materialize(build_prep_assets(role), instance=instance, partition_key=key, resources={"settings": settings},
                    run_config={"ops": {f"{role}__frames": {"config": run_config}}})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-frames", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_sample(root / "data")
        rows = []
        for role, key in PARTITION_KEYS.items():
            folder = root / "data" / ROLE_FOLDERS[role] / key
            n_naive, naive_decode, naive_detect = naive(folder)
            n_ours, ours_extract, ours_detect = facepipe_stages(folder, root / "work" / role, args.max_frames)
            naive_epoch = naive_decode + naive_detect
            rows.append({
                "partition": f"{role}/{key}",
                "frames naive": n_naive, "frames facepipe": n_ours,
                "decode fps naive": n_naive / naive_decode, "extract fps facepipe": n_ours / ours_extract,
                "landmark fps naive": n_naive / naive_detect, "landmark fps facepipe": n_ours / ours_detect,
            })
        table = pd.DataFrame(rows).set_index("partition")
        table["landmark speedup"] = table["landmark fps facepipe"] / table["landmark fps naive"]
        print(table.round(2).to_string())
        print("facepipe extraction writes each kept frame once as PNG; its landmarking also runs the face detector "
              "for a per-frame score and the several-faces policy; the naive way redoes all of it every epoch.")

        instance = DagsterInstance.ephemeral()
        for role, key in PARTITION_KEYS.items():
            instance.add_dynamic_partitions(PARTITIONS[role].name, [key])
        config = {"max_frames": args.max_frames}
        cold = chain_time(root / "data", root / "store", instance, config)
        warm = chain_time(root / "data", root / "store", instance, config)
        print(epoch_data_cost(root / "store", TARGET_KEY, naive_epoch, n_naive))
        print(f"whole chain, both partitions: cold {cold:.2f}s, cached repeat {warm:.2f}s "
              f"= {warm / cold:.3f} of cold ({cold / warm:.0f}x faster)")


if __name__ == "__main__":
    main()
