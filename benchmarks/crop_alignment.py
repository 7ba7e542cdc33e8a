"""How far facepipe's aligned crops are from the crop a runtime feeds, on real talking heads.

The swap model sees, at run time, the crop FaceFusion's deep_swapper cuts (facepipe.evaluate:
five points from the eye contours, RANSAC partial affine to dfl_whole_face, INTER_AREA warp).
It is trained on facepipe's own crops (facepipe.align). This compares the two on every sampled
frame of the dev videos, for facepipe's alignment before issue 13 (iris centres 468/473, nose
1, mouth corners: ``align.IRIS_FIVE_POINTS``) and now (``align.five_points``: eye-contour means,
nose tip, mouth corners — FaceFusion's semantics):

- displacement: where the runtime crop's pixels land in ours, mean over the crop's four corners
  and the five template points, in pixels of a 256 px crop (0 = the same geometry);
- grey difference: mean absolute grey-level difference of the two crops over the central face
  (``faces.CENTRAL_FACE``), 0-255. cv2.warpAffine has no area mode (FaceFusion's INTER_AREA
  warps bilinearly, as facepipe does), so the same geometry gives the same crop.

    .venv/bin/python benchmarks/crop_alignment.py                  # ../shared/media, 40 frames a video
    .venv/bin/python benchmarks/crop_alignment.py --frames 100 --media DIR

Landmarks: MediaPipe FaceMesh as the landmarks asset runs it (tracking within a video), for both
crops: this measures the choice of five points, not how FaceFusion's own 68-point landmarker
differs from MediaPipe. The run skips with a message when the media are absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MEDIA = REPO.parent / "shared" / "media"
SIZE = 256  # the faces asset's default crop size


def sampled_frames(path: Path, count: int) -> list[np.ndarray]:
    from facepipe.media import decode_video

    frames = list(decode_video(path))
    picks = np.unique(np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int))
    return [frames[i] for i in picks]


def displacement(ours: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance (px) between where our crop and the reference crop put the same frame points,
    over the reference crop's corners and the five template points."""
    from facepipe.align import template_points

    to_frame = cv2.invertAffineTransform(reference)
    probe = np.vstack([[[0, 0], [SIZE, 0], [0, SIZE], [SIZE, SIZE]], template_points(SIZE)])
    in_frame = probe @ to_frame[:, :2].T + to_frame[:, 2]
    in_ours = in_frame @ ours[:, :2].T + ours[:, 2]
    return float(np.linalg.norm(in_ours - probe, axis=1).mean())


def grey_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    from facepipe.evaluate import central_face

    a, b = (cv2.cvtColor(central_face(c), cv2.COLOR_BGR2GRAY).astype(np.float64) for c in (ours, reference))
    return float(np.abs(a - b).mean())


def measure_video(path: Path, count: int) -> dict[str, np.ndarray]:
    from facepipe.align import IRIS_FIVE_POINTS, alignment_matrix, five_points, warp_to_crop
    from facepipe.evaluate import facefusion_crop
    from facepipe.landmarks import detect_landmarks

    frames = sampled_frames(path, count)
    found = detect_landmarks([(frame, path.stem) for frame in frames])
    rows: dict[str, list[float]] = {f"{k}_{m}": [] for k in ("before", "after") for m in ("px", "grey")}
    for frame, points, ok in zip(frames, found.points, found.detected):
        if not ok:
            continue
        reference_crop, reference = facefusion_crop(frame, five_points(points), SIZE)
        for key, five in (("before", points[IRIS_FIVE_POINTS, :2]), ("after", five_points(points))):
            matrix = alignment_matrix(five, SIZE)
            rows[f"{key}_px"].append(displacement(matrix, reference))
            rows[f"{key}_grey"].append(grey_difference(warp_to_crop(frame, matrix, SIZE), reference_crop))
    return {k: np.array(v) for k, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA, help="dev media folder (MANIFEST.md layout)")
    parser.add_argument("--frames", type=int, default=40, help="frames sampled evenly per video")
    args = parser.parse_args(argv)
    videos = sorted((args.media / "videos").glob("*.mp4"))
    if not videos:
        print(f"crop_alignment: no dev videos under {args.media}/videos; skipped. Pass --media DIR.")
        return 0
    print(f"Crop vs FaceFusion's crop ({SIZE} px), iris-centre alignment (before) vs eye-contour "
          f"alignment (after); displacement in px (mean / p95 / max), grey difference 0-255 (mean)\n")
    print("| video | faces | before: displacement px | after: displacement px | before: grey | after: grey |")
    print("|---|---|---|---|---|---|")
    every: dict[str, list[np.ndarray]] = {}
    for video in videos:
        rows = measure_video(video, args.frames)
        for key, values in rows.items():
            every.setdefault(key, []).append(values)
        print(summary_row(video.stem, rows))
    print(summary_row("all", {k: np.concatenate(v) for k, v in every.items()}))
    return 0


def summary_row(name: str, rows: dict[str, np.ndarray]) -> str:
    def spread(values: np.ndarray) -> str:
        return f"{values.mean():.2f} / {np.percentile(values, 95):.2f} / {values.max():.2f}" if len(values) else "–"

    cells = [name, str(len(rows["after_px"])), spread(rows["before_px"]), spread(rows["after_px"]),
             f"{rows['before_grey'].mean():.2f}", f"{rows['after_grey'].mean():.2f}"]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    sys.exit(main())
