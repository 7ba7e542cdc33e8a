"""Data preparation assets, built once by a factory for both roles (identity and target).

media → frames → landmarks → smoothed_landmarks → faces, each keyed `<role>/<stage>`.
The asset functions only resolve inputs, call the plain functions and report metadata.
"""


import dataclasses
import time
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    Failure,
    MaterializeResult,
    asset,
)

from facepipe import faces as face_set
from facepipe.assets.failures import failure_policy
from facepipe.assets.stage import PREVIEW_FILE, reads_outside, run_stage, upstream
from facepipe.landmarks import LandmarkResult, detect_landmarks_in_segments, tracking_reduction, tracking_segments
from facepipe.media import (
    FRAME_ENCODING,
    MEDIA_LISTING,
    MediaError,
    Skipped,
    folder_signature,
    extract_frames,
    frame_groups,
    media_hash,
    probe,
    read_frames,
    read_sources,
    read_frame,
    scan_media,
    write_sources,
)
from facepipe.partitions import PARTITIONS, media_dir
from facepipe.preview import contact_sheet, evenly_spaced, outline, write_png
from facepipe.resources import FacepipeSettings
from facepipe.store import Artifact
from facepipe.smoothing import contiguous_runs, jitter, smooth_landmarks
from facepipe.train.telemetry import format_duration

# Bump a stage's version when its output for the same inputs changes; the store keys on it
# (facepipe_tests/test_code_versions.py fails when the code changed and the version did not).
CODE_VERSIONS = {
    "media": "2",  # 2: images over 64 megapixels are skipped (were decoded in full)
    "frames": "2",  # 2: JPEG q95 instead of PNG; videos read by grabbing/seeking (same frames)
    # 2: the detector scores the first face of a track, the track carries it; score_measured column; 3: runs
    # of 200 frames or more tracked in two segments at once (landmarks.tracking_segments); 4: frames of 1080
    # lines or more tracked at 1/2 (1/4, 1/8) of their size (landmarks.tracking_reduction), runs of 120 frames
    # or more in two segments
    "landmarks": "4",
    "smoothed_landmarks": "2",  # 2: passes the score_measured column on
    # 2: frames 2 (JPEG), read by two threads ahead of the alignment; 3: aligned on the eye-contour means
    # (FaceFusion's five points), not the iris centres; 4: a frame whose crop shrinks the face 2x or more is
    # decoded at 1/2 (1/4, 1/8) of its size (libjpeg's DCT scaling) and warped from there
    "faces": "4",
}


class FramesConfig(Config):
    max_frames: int = 1000  # exact cap, sampled uniformly over all media of the partition


class LandmarksConfig(Config):
    max_faces: int = 4  # faces FaceMesh looks for per frame; the largest one is kept


class SmoothingConfig(Config):
    window: int = 7  # Savitzky-Golay window (odd, in sampled frames)
    order: int = 2


class FacesConfig(Config):
    size: int = 256  # aligned crop size in px (dfl_whole_face template)


def prep_key(role: str, stage: str) -> AssetKey:
    return AssetKey([role, stage])


def progress_logger(context: AssetExecutionContext, what: str):
    """`log(done, total)`: "<what>: done/total (pct, rate/s, ETA h:mm:ss)" in the run log."""
    started = time.monotonic()

    def log(done: int, total: int) -> None:
        elapsed = time.monotonic() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = format_duration((total - done) / rate) if rate > 0 else "?"
        context.log.info(f"{what}: {done}/{total} ({100 * done / max(total, 1):.0f}%, {rate:.1f}/s, ETA {eta})")

    return log


@lru_cache(maxsize=1024)
def _media_digest(folder: str, signature: str) -> str:
    """Content hash of the media in `folder`; memoised on the folder's name/size/mtime
    signature, so an unchanged folder is read once per code-server process, not every night."""
    files, _skipped = scan_media(Path(folder))
    return media_hash(files)


def folder_media_digest(folder: Path) -> str:
    return _media_digest(str(folder), folder_signature(folder))


def several_faces(manifest: pd.DataFrame, num_faces: np.ndarray) -> dict[str, list[tuple[int, int]]]:
    """{source file: [(frame index in that file, faces found)]} for frames with more than one face."""
    crowded: dict[str, list[tuple[int, int]]] = {}
    for row, count in zip(manifest.itertuples(index=False), num_faces):
        if count > 1:
            crowded.setdefault(str(row.source), []).append((int(row.source_frame_index), int(count)))
    return dict(sorted(crowded.items()))


def frames_list(frames: list[tuple[int, int]], shown: int = 8) -> str:
    listed = ", ".join(f"frame {index}: {count} faces" for index, count in frames[:shown])
    return listed + (f", ... {len(frames) - shown} more" if len(frames) > shown else "")


def build_prep_assets(role: str) -> list:
    """The five data-preparation assets for one role."""
    partitions = PARTITIONS[role]
    own = lambda stage: upstream(f"{role}/{stage}")  # noqa: E731 - an input of the same role and partition
    common = dict(partitions_def=partitions, group_name=role)

    @reads_outside(f"{role}/media")
    def media_input(settings: FacepipeSettings, key: str, config: dict) -> dict[str, str]:
        """The media files' content: every media-named file in the folder, usable or not (the media
        step keys its output on the same hash; which of them decode is its output)."""
        return {"media": folder_media_digest(media_dir(settings.data_path, role, key))}

    @asset(key=prep_key(role, "media"), code_version=CODE_VERSIONS["media"], **common,
           description="The usable media files of the partition folder (each opened once); data version = content hash.")
    @failure_policy
    def media(context: AssetExecutionContext, settings: FacepipeSettings) -> MaterializeResult:
        folder = media_dir(settings.data_path, role, context.partition_key)
        files, skipped = scan_media(folder)  # a missing folder fails through failure_policy
        sources = []
        for file in files:  # open each file once, so undecodable ones are reported here
            try:
                sources.append(probe(file))
            except MediaError as error:
                skipped.append(Skipped(file.rel, str(error)))
        for item in skipped:
            context.log.warning(f"skipping {folder / item.rel}: {item.reason}")
        if not sources:
            raise Failure(
                f"{role} '{context.partition_key}': no usable media in {folder}"
                + (f" (skipped: {'; '.join(map(str, skipped))})" if skipped else "")
                + ". Add videos (mp4, mov, avi, mkv, webm) or images (jpg, png, webp, bmp) and materialize again.",
                allow_retries=False,
            )
        digest = media_hash([s.file for s in sources])

        def write(out: Path) -> dict:
            write_sources(out / MEDIA_LISTING, sources, digest)
            return {"files": len(sources), "videos": sum(s.file.kind == "video" for s in sources),
                    "images": sum(s.file.kind == "image" for s in sources), "skipped": [str(s) for s in skipped]}

        # Keyed on every media-named file, usable or not, as the nightly hashes them (media_input):
        # a folder holding an undecodable file is then not "changed" every night.
        return run_stage(context, settings, {}, write, inputs={"media": media_hash(files)})

    @asset(key=prep_key(role, "frames"), ins={"media": own("media")}, code_version=CODE_VERSIONS["frames"], **common,
           description="Frames decoded from videos and images, at most max_frames sampled uniformly; manifest table.")
    @failure_policy
    def frames(context: AssetExecutionContext, config: FramesConfig, settings: FacepipeSettings,
               media: Artifact) -> MaterializeResult:
        folder = media_dir(settings.data_path, role, context.partition_key)

        def write(out: Path) -> dict:
            sources = read_sources(media.path / MEDIA_LISTING, folder)
            decodings: dict = {}
            manifest = extract_frames(sources, config.max_frames, out / "frames", progress_logger(context, "frames written"),
                                      context.log.warning, decodings)
            manifest.to_parquet(out / "manifest.parquet", index=False)
            per_source = manifest.groupby("source").size().to_dict()
            return {"frames": len(manifest), "max_frames": config.max_frames, "sources": len(sources),
                    "frames_per_source": {k: int(v) for k, v in sorted(per_source.items())},
                    "format": f"JPEG quality {FRAME_ENCODING[1]}",
                    "video_frames_decoded": sum(d.decoded for d in decodings.values()),
                    "video_seeks": sum(d.seeks for d in decodings.values())}

        return run_stage(context, settings, config.model_dump(), write)

    @asset(key=prep_key(role, "landmarks"), ins={"frames": own("frames")}, code_version=CODE_VERSIONS["landmarks"],
           **common, description="MediaPipe FaceMesh (478 refined points), box and score per frame; tracking within a video.")
    @failure_policy
    def landmarks(context: AssetExecutionContext, config: LandmarksConfig, settings: FacepipeSettings,
                  frames: Artifact) -> MaterializeResult:
        key = context.partition_key

        def write(out: Path) -> dict:
            manifest = pd.read_parquet(frames.path / "manifest.parquet")
            report = progress_logger(context, "landmarks (frames)")
            segments = tracking_segments(frame_groups(manifest))
            # Both cores decode between them: one thread per segment where two segments are tracked.
            decoders = max(1, 2 // len(segments))
            result = detect_landmarks_in_segments(
                segments, lambda first, end: read_frames(frames.path / "frames", manifest.iloc[first:end], rgb=True,
                                                         workers=decoders, reduction=tracking_reduction),
                max_faces=config.max_faces, rgb=True,
                progress=lambda done: (done % 50 == 0 or done == len(manifest)) and report(done, len(manifest)))
            detected = int(result.detected.sum())
            if detected == 0:
                raise Failure(f"{role} '{key}': no face found in any of {len(manifest)} frames of "
                              f"{media_dir(settings.data_path, role, key)}. Add media where the face is clearly visible.",
                              allow_retries=False)
            result.save(out)
            missing = manifest.loc[~result.detected, "source"].value_counts().sort_index()
            for source, count in missing.items():
                context.log.warning(f"{source}: no face in {count} frame(s); they are recorded and left out of faces")
            crowded = several_faces(manifest, result.num_faces)
            for source, shown in crowded.items():
                context.log.warning(f"{source}: {len(shown)} frame(s) show more than one face ({frames_list(shown)}); "
                                    "the largest is kept. If that is not always the person of this folder, "
                                    "crop or remove those frames")
            return {"frames": len(manifest), "detected": detected, "detection_rate": round(detected / len(manifest), 4),
                    "detector_frames": int(result.score_measured.sum()),
                    "multi_face_frames": int((result.num_faces > 1).sum()),
                    "multi_face_frames_by_source": {source: len(shown) for source, shown in crowded.items()},
                    "no_face_frames": {str(k): int(v) for k, v in missing.items()}}

        return run_stage(context, settings, config.model_dump(), write)

    @asset(key=prep_key(role, "smoothed_landmarks"), ins={"frames": own("frames"), "landmarks": own("landmarks")},
           code_version=CODE_VERSIONS["smoothed_landmarks"], **common,
           description="Savitzky-Golay smoothing per contiguous run of detected video frames; stills untouched.")
    @failure_policy
    def smoothed_landmarks(context: AssetExecutionContext, config: SmoothingConfig, settings: FacepipeSettings,
                           frames: Artifact, landmarks: Artifact) -> MaterializeResult:
        def write(out: Path) -> dict:
            manifest = pd.read_parquet(frames.path / "manifest.parquet")
            raw = LandmarkResult.load(landmarks.path)
            runs = contiguous_runs(raw.detected, manifest["source"].to_numpy(), manifest["source_frame_index"].to_numpy(),
                                   (manifest["kind"] == "video").to_numpy(), manifest["stride"].to_numpy())
            smoothed = smooth_landmarks(raw.points, runs, config.window, config.order)
            dataclasses.replace(raw, points=smoothed).save(out)
            before, after = jitter(raw.points, runs), jitter(smoothed, runs)
            context.log.info(f"jitter (mean landmark acceleration, px/frame^2): {before:.4f} -> {after:.4f}")
            return {"runs": len(runs), "frames_in_runs": int(sum(len(r) for r in runs)),
                    "jitter_before": round(before, 6), "jitter_after": round(after, 6)}

        return run_stage(context, settings, config.model_dump(), write)

    @asset(key=prep_key(role, "faces"), ins={"frames": own("frames"), "smoothed_landmarks": own("smoothed_landmarks")},
           code_version=CODE_VERSIONS["faces"], **common,
           description="Aligned face crops (dfl_whole_face template) + landmark-hull masks in memory-mappable arrays.")
    @failure_policy
    def faces(context: AssetExecutionContext, config: FacesConfig, settings: FacepipeSettings, frames: Artifact,
              smoothed_landmarks: Artifact) -> MaterializeResult:
        def write(out: Path) -> dict:
            manifest = pd.read_parquet(frames.path / "manifest.parquet")
            marks = LandmarkResult.load(smoothed_landmarks.path)
            rows = np.flatnonzero(marks.detected)
            detected_frames = ((int(manifest.frame_id.iat[i]), partial(read_frame, frames.path / "frames" / manifest.file.iat[i]),
                                marks.points[i]) for i in rows)
            frame_ids, matrices = face_set.build_face_set(detected_frames, len(rows), config.size, out,
                                                          progress_logger(context, "faces aligned"))
            index = manifest.iloc[rows][["frame_id", "source", "kind", "source_frame_index", "timestamp_s"]].reset_index(drop=True)
            index.insert(0, "face_id", np.arange(len(rows)))
            index["score"] = marks.score[rows].astype(np.float32)
            index[[f"m{i}" for i in range(6)]] = matrices.reshape(-1, 6)
            index.to_parquet(out / face_set.INDEX, index=False)
            written = face_set.FaceSet.load(out)
            picks = evenly_spaced(len(written), 32)
            write_png(out / PREVIEW_FILE, contact_sheet([outline(written.crops[i], written.masks[i]) for i in picks]))
            return {"faces": len(rows), "size": config.size, "template": "dfl_whole_face", "colour_order": "BGR"}

        return run_stage(context, settings, config.model_dump(), write)

    return [media, frames, landmarks, smoothed_landmarks, faces]
