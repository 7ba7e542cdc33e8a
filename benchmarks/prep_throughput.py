"""Data-preparation throughput end to end, against the serial bound measured in the same run.

For each video it materializes the five preparation assets of one target partition
(media → frames → landmarks → smoothed_landmarks → faces, in-process, fresh store) and prints per
video: frames kept, each stage's seconds and share of the total, the total, the serial bound
measured in the same run on the same file — decoding every frame alone plus MediaPipe FaceMesh
(tracking mode, the landmarks stage's settings) alone on the frames the pipeline keeps — the
ratio bound / total (1.0 = as fast as the bound; the goal is >= 0.5), the CPU seconds the
preparation used (all threads) and how many cores that kept busy on average (on a shared
machine, fewer than 2 says the others took the rest), the cached repeat, the peak RSS of the
preparation process, and what was detected (frames with a face, frames with several
faces, frames the full-range detector scored).

Videos: from --media (default ../shared/media; see MANIFEST.md there) the 480p-class
german_news_20s and obama_20s, kim_7s scaled to 1280x720 (written once into --work) for 720p,
and kim_7s and mead_w040_happy for 1080p; the embedded sample's two partitions (videos and
stills) when that folder is absent or with --sample. --long adds a synthetic 10-minute 1080p
video (15000 frames, written once into --work, which takes a few minutes): with max_frames 1000
only every 15th frame is kept, and the table says how many frames were decoded to get them.

Each measurement runs in its own process (peak RSS is that process's). The machine may be
shared and its speed drifts from minute to minute (a 1080p JPEG decode took 5.6 ms and 12-15 ms
in the same hour): each video is prepared --repeat times (3), each preparation set against the
mean of the bounds measured just before and just after it, and the table shows the repetition
with the median ratio and the range of all of them.

    .venv/bin/python benchmarks/prep_throughput.py [--long] [--sample] [--only kim_7s ...] [--repeat 3] [--work /tmp/prep_bench]

To measure another version of facepipe with the same script, put it first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
STAGES = ("media", "frames", "landmarks", "smoothed_landmarks", "faces")
LONG_NAME = "synthetic_10min_1080p"
LONG_FRAMES = 15000  # 10 minutes at 25 fps


def cases(media: Path, work: Path, long: bool, sample: bool = False) -> list[dict]:
    """{name, role, key, folder, resolution} per partition to prepare; folders under `work/data`
    (the sample's under `work/sample`)."""
    data = work / "data"
    videos = media / "videos"
    found: list[dict] = []
    if videos.is_dir():
        for name, resolution in (("german_news_20s", "480p"), ("obama_20s", "480p"), ("kim_7s_720p", "720p"),
                                 ("kim_7s", "1080p"), ("mead_w040_happy", "1080p")):
            folder = data / "targets" / name.replace("_", "-")
            target = folder / f"{name}.mp4"
            if not target.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                if name == "kim_7s_720p":
                    scaled_copy(videos / "kim_7s.mp4", target, (1280, 720))
                else:
                    shutil.copyfile(videos / f"{name}.mp4", target)
            found.append({"name": name, "role": "target", "key": folder.name, "folder": str(folder), "resolution": resolution})
    if sample or not videos.is_dir():
        from facepipe.sample import IDENTITY_KEY, TARGET_KEY, build_sample

        sample_data = work / "sample" / "data"
        if not (sample_data / "targets" / TARGET_KEY).is_dir():
            build_sample(sample_data)
        for role, key, folder in (("identity", IDENTITY_KEY, "identities"), ("target", TARGET_KEY, "targets")):
            found.append({"name": f"sample_{role}", "role": role, "key": key, "folder": str(sample_data / folder / key),
                          "resolution": "sample"})
    if long:
        folder = data / "targets" / LONG_NAME.replace("_", "-")
        target = folder / f"{LONG_NAME}.mp4"
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            synthetic_long_video(media, target)
        found.append({"name": LONG_NAME, "role": "target", "key": folder.name, "folder": str(folder), "resolution": "1080p"})
    return found


def scaled_copy(source: Path, target: Path, size: tuple[int, int]) -> None:
    from facepipe.media import decode_video
    import cv2

    frames = [cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in decode_video(source)]
    write_mp4(target, frames, 30)


def write_mp4(target: Path, frames, fps: int) -> None:
    import cv2

    first = None
    writer = None
    for frame in frames:
        if writer is None:
            first = frame
            writer = cv2.VideoWriter(str(target.with_suffix(".tmp.mp4")), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                     (first.shape[1], first.shape[0]))
        writer.write(frame)
    writer.release()
    target.with_suffix(".tmp.mp4").rename(target)


def synthetic_long_video(media: Path, target: Path) -> None:
    """10 minutes of 1080p at 25 fps: the first 50 frames of kim_7s played back and forth (a
    talking head that never cuts away), or the sample's hopper face drifting over a backdrop."""
    import cv2
    import numpy as np

    source = media / "videos" / "kim_7s.mp4"
    if source.is_file():
        from facepipe.media import decode_video

        clip = []
        for frame in decode_video(source):
            clip.append(frame)
            if len(clip) == 50:
                break
    else:
        from facepipe.sample.faces import hopper_face  # noqa: PLC0415 - only without the dev media

        face = hopper_face(360)
        clip = []
        for i in range(50):
            canvas = np.full((1080, 1920, 3), 90, np.uint8)
            canvas[300 : 300 + face.shape[0], 700 + 4 * i : 700 + 4 * i + face.shape[1]] = face
            clip.append(canvas)
    cycle = clip + clip[-2:0:-1]
    write_mp4(target, (cycle[i % len(cycle)] for i in range(LONG_FRAMES)), 25)


def bound(video: Path, max_frames: int) -> dict:
    """Seconds to decode every frame (nothing else), and FaceMesh in tracking mode alone on the
    frames the pipeline keeps (only process() is timed)."""
    import cv2
    import mediapipe as mp

    from facepipe.media import sample_positions

    capture = cv2.VideoCapture(str(video))
    total, started, cpu_started = 0, time.perf_counter(), cpu_seconds()
    while True:
        ok, _frame = capture.read()
        if not ok:
            break
        total += 1
    decode_s, decode_cpu_s = time.perf_counter() - started, cpu_seconds() - cpu_started
    capture.release()
    keep = set(sample_positions(total, max_frames).tolist())
    mesh_s = 0.0
    capture = cv2.VideoCapture(str(video))
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=4, refine_landmarks=True) as mesh:
        for index in range(total):
            if index not in keep:
                capture.grab()
                continue
            ok, frame = capture.read()
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            started = time.perf_counter()
            mesh.process(rgb)
            mesh_s += time.perf_counter() - started
    capture.release()
    return {"video_frames": total, "decode_s": decode_s, "mesh_s": mesh_s, "bound_s": decode_s + mesh_s,
            "decode_cpu_s": decode_cpu_s}


def cpu_seconds() -> float:
    """CPU time of this process, all its threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare(case: dict, store: Path, max_frames: int) -> dict:
    """Materialize the five assets cold (fresh store), then again (cached); seconds per stage."""
    import pandas as pd
    from dagster import DagsterEventType, DagsterInstance, materialize

    from facepipe.assets.prep import build_prep_assets
    from facepipe.assets.stage import STORE_INPUT, store_input
    from facepipe.partitions import PARTITIONS
    from facepipe.resources import FacepipeSettings

    role, key = case["role"], case["key"]
    data_root = Path(case["folder"]).parents[1]
    settings = FacepipeSettings(data_root=str(data_root), store_root=str(store))
    resources = {"settings": settings, STORE_INPUT: store_input}
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(PARTITIONS[role].name, [key])
    run_config = {"ops": {f"{role}__frames": {"config": {"max_frames": max_frames}}}}
    started, cpu_started = time.perf_counter(), cpu_seconds()
    result = materialize(build_prep_assets(role), instance=instance, partition_key=key, resources=resources,
                         run_config=run_config)
    total_s, cpu_s = time.perf_counter() - started, cpu_seconds() - cpu_started
    starts, seconds = {}, {}
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        stage = event.step_key.split("__", 1)[1]
        if event.event_type == DagsterEventType.STEP_START:
            starts[stage] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            seconds[stage] = entry.timestamp - starts[stage]
    started = time.perf_counter()
    materialize(build_prep_assets(role), instance=instance, partition_key=key, resources=resources,
                run_config=run_config)
    cached_s = time.perf_counter() - started
    marks = settings.store.current(f"{role}/landmarks", key)
    table = pd.read_parquet(marks.path / "table.parquet")
    frames = settings.store.current(f"{role}/frames", key)
    scored = table["score_measured"] if "score_measured" in table else table["detected"]
    return {
        "stages_s": seconds, "total_s": total_s, "cpu_s": cpu_s, "cached_s": cached_s,
        "frames": len(table), "detected": int(table["detected"].sum()),
        "several_faces": int((table["num_faces"] > 1).sum()), "detector_frames": int(scored.sum()),
        "mean_score": float(table.loc[table["detected"], "score"].mean()),
        "decoded": frames.metadata.get("video_frames_decoded"), "seeks": frames.metadata.get("video_seeks"),
        "frame_format": frames.metadata.get("format", "PNG"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(what: str, case: dict, args: argparse.Namespace, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", what, "--case", json.dumps(case), "--max-frames", str(args.max_frames),
               "--work", str(args.work), *extra]
    completed = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    if completed.returncode != 0:
        raise SystemExit(f"{what} of {case['name']} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    case = json.loads(args.case)
    if args.child == "bound":
        videos = sorted(Path(case["folder"]).glob("*.mp4"))
        parts = [bound(video, args.max_frames) for video in videos]  # the sample: each video on its own
        print(json.dumps({k: sum(p[k] for p in parts) for k in ("video_frames", "decode_s", "mesh_s", "bound_s", "decode_cpu_s")}))
    else:
        store = args.work / "stores" / case["key"]
        shutil.rmtree(store, ignore_errors=True)
        print(json.dumps(prepare(case, store, args.max_frames)))
        shutil.rmtree(store, ignore_errors=True)


def spread(ratios: list[float]) -> str:
    """' (low-high)' of the repetitions' ratios, or nothing for one."""
    return f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""


def table_rows(results: list[dict]) -> list[str]:
    """The markdown table; each row is the repetition with the median ratio, its range beside it."""
    header = ("| video | res | frames | decoded | frames stage | landmarks | smoothing | faces | media | total | "
              "bound (decode + mesh) | ratio | CPU s (cores busy) | cached | peak RSS | detected | several faces | detector ran | mean score |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        s, total = r["stages_s"], r["total_s"]

        def cell(stage: str) -> str:
            return f"{s.get(stage, 0):.2f} s ({100 * s.get(stage, 0) / total:.0f} %)"

        decoded = r["decoded"] if r["decoded"] is not None else f"{r['video_frames']} (all)"
        lines.append(
            f"| {r['name']} | {r['resolution']} | {r['frames']} | {decoded} | {cell('frames')} | {cell('landmarks')} | "
            f"{cell('smoothed_landmarks')} | {cell('faces')} | {cell('media')} | {total:.2f} s | {r['bound_s']:.2f} s "
            f"({r['decode_s']:.2f} + {r['mesh_s']:.2f}) | **{r['ratio']:.2f}**{spread(r['ratios'])} | {r['cpu_s']:.1f} ({r['cpu_s'] / total:.2f}) | "
            f"{r['cached_s']:.2f} s | "
            f"{r['peak_rss_mb']:.0f} MB | {r['detected']} | {r['several_faces']} | {r['detector_frames']} | {r['mean_score']:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/facepipe_prep_bench"),
                        help="keeps the derived 720p and 10-minute videos between runs")
    parser.add_argument("--max-frames", type=int, default=1000)
    parser.add_argument("--long", action="store_true", help="add the synthetic 10-minute 1080p video")
    parser.add_argument("--sample", action="store_true", help="add the embedded sample's two partitions")
    parser.add_argument("--only", nargs="*", help="names of the videos to run")
    parser.add_argument("--repeat", type=int, default=3,
                        help="preparations per video, each between two measurements of the bound (median reported)")
    parser.add_argument("--child", choices=("bound", "prepare"), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work.resolve()
    if args.child:
        child(args)
        return
    import facepipe

    print(f"facepipe from {Path(facepipe.__file__).parent}, max_frames {args.max_frames}, {os.cpu_count()} CPUs")
    results = []
    for case in cases(args.media, args.work, args.long, args.sample):
        if args.only and case["name"] not in args.only:
            continue
        runs, before = [], run_child("bound", case, args, [])
        for repetition in range(args.repeat):
            prepared = run_child("prepare", case, args, [])
            after = run_child("bound", case, args, [])
            # This machine's speed drifts from minute to minute: each preparation is set against the
            # mean of the bounds measured just before and just after it.
            bracket = {name: (before[name] + after[name]) / 2 for name in before}
            runs.append({**case, **bracket, **prepared, "ratio": bracket["bound_s"] / prepared["total_s"]})
            before = after
            print(f"{case['name']} ({repetition + 1}/{args.repeat}): total {prepared['total_s']:.2f}s, bound "
                  f"{bracket['bound_s']:.2f}s, ratio {runs[-1]['ratio']:.2f}, peak RSS {prepared['peak_rss_mb']:.0f} MB",
                  flush=True)
        ratios = sorted(run["ratio"] for run in runs)
        median_run = next(run for run in runs if run["ratio"] == ratios[(len(ratios) - 1) // 2])
        results.append({**median_run, "ratios": ratios})
    print()
    print("\n".join(table_rows(results)))
    print(f"\nframes format: {results[0]['frame_format'] if results else '-'}; stage seconds are Dagster step times "
          "(start to success), total is the whole materialization; ratio = bound / total, the median of "
          f"{args.repeat} preparation(s), each against the mean of the bounds measured just before and after it (range beside it)")
    (args.work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
