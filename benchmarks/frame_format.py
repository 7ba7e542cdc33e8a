"""Which file format the frames asset stores: lossless PNG against JPEG at high quality.

For each video (the dev media in ../shared/media/videos when present, the embedded sample's
videos otherwise) it decodes up to --frames frames, stores each one in every candidate format,
and prints per format: encode and decode milliseconds per frame, kilobytes per frame, and what
the format does to the landmarks — FaceMesh in tracking mode on the decoded stored frames
against FaceMesh on the lossless frames (PNG decodes to the video's own pixels): frames whose
detection differs, frames whose face count differs, and the landmark difference in pixels and
as a fraction of the face's height (mean, 99th percentile, max over the 478 points of every
frame detected in both).

    .venv/bin/python benchmarks/frame_format.py [--frames 150] [--media ../shared/media]

Timings are per frame on one thread; the machine may be shared, so compare formats within a run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from facepipe.landmarks import detect_landmarks
from facepipe.media import decode_video

FORMATS = {
    "png (lossless)": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
    "jpeg q100": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100]),
    "jpeg q95": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    "jpeg q90": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
}
DEFAULT_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def videos(media: Path, work: Path) -> list[Path]:
    found = sorted((media / "videos").glob("*.mp4")) if (media / "videos").is_dir() else []
    if found:
        return found
    from facepipe.sample import build_sample

    build_sample(work / "data")
    return sorted((work / "data").rglob("*.mp4"))


def landmark_effect(reference, other) -> dict:
    both = reference.detected & other.detected
    heights = (reference.box[both, 3] - reference.box[both, 1])[:, None]
    distance = np.linalg.norm(reference.points[both, :, :2] - other.points[both, :, :2], axis=2)
    relative = distance / heights
    return {
        "detection differs": int((reference.detected != other.detected).sum()),
        "face count differs": int((reference.num_faces != other.num_faces).sum()),
        "px mean": float(distance.mean()) if both.any() else float("nan"),
        "px p99": float(np.percentile(distance, 99)) if both.any() else float("nan"),
        "px max": float(distance.max()) if both.any() else float("nan"),
        "% face h mean": 100 * float(relative.mean()) if both.any() else float("nan"),
        "% face h max": 100 * float(relative.max()) if both.any() else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150, help="frames per video (from the start)")
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in videos(args.media, Path(tmp)):
            frames = []
            for frame in decode_video(path):
                frames.append(frame)
                if len(frames) == args.frames:
                    break
            group = path.name
            reference = detect_landmarks((frame, group) for frame in frames)
            for name, (extension, params) in FORMATS.items():
                started = time.perf_counter()
                encoded = [cv2.imencode(extension, frame, params)[1] for frame in frames]
                encode_ms = 1e3 * (time.perf_counter() - started) / len(frames)
                started = time.perf_counter()
                decoded = [cv2.imdecode(data, cv2.IMREAD_COLOR) for data in encoded]
                decode_ms = 1e3 * (time.perf_counter() - started) / len(frames)
                effect = landmark_effect(reference, detect_landmarks((frame, group) for frame in decoded))
                rows.append({"video": f"{path.name} {frames[0].shape[1]}x{frames[0].shape[0]}", "format": name,
                             "frames": len(frames), "encode ms": encode_ms, "decode ms": decode_ms,
                             "kB": float(np.mean([len(data) for data in encoded])) / 1e3, **effect})
                print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.round(3).to_string(index=False))
    print()
    print(table.groupby("format", sort=False)[["encode ms", "decode ms", "kB", "detection differs", "face count differs",
                                               "px mean", "px max", "% face h mean", "% face h max"]].mean().round(3).to_string())


if __name__ == "__main__":
    main()
