"""Swap quality on real talking heads, the way FaceFusion's deep_swapper uses the published model.

Builds declared dev pairs through the normal asset graph (each role's job, then the pair job,
with a run config), then feeds each pair's published `.dfm` held-out target frames exactly as
FaceFusion does (facepipe.evaluate: five points from the eye contours, RANSAC partial affine to
dfl_whole_face, INTER_AREA warp, 1.75·crop − 0.75·blur sharpening, outputs by position,
eroded/blurred mask ∩ box mask, the swap colour-matched to the crop it replaces and pasted back)
and reports, on the model's own output, beside pasting the mean identity face:
identity shares, attribute following (mouth, eyes, yaw, pitch), sharpness ratio, checkerboard,
temporal ratio and training time — at every stage of a staged training (quality against time).
The same crops are also fed without the sharpening, as DeepFaceLive feeds them (uint8 / 255), and
measured alike (``metrics.unsharpened`` in results.json, a column of its own in results.md).
And what a viewer judges is measured too: the frame with the swap pasted back, cropped as the
target is (``metrics.pasted``), beside the mean identity face pasted back through the same mask
with the same colour matching (``metrics.pasted_baseline``) — the target's hair, ears and face
shape around a pasted face carry some of its pose and of its identity, so a pasted swap is
compared with a pasted mean face, not with zero. And the ceiling: the target's own face at the
model's size through the swap's mask (``metrics.target_copy``), measured as a swap is — what a
perfect copy of the target's face would score in following and sharpness at that size (its
identity columns are the target's, not a goal); and that copy pasted back as the swap is
(``metrics.pasted_copy``): how sharp any face of the model's size can look once the runtime
enlarges it into the frame.

    .venv/bin/python benchmarks/swap_quality.py                       # every pair, default epochs
    .venv/bin/python benchmarks/swap_quality.py --pairs german_news/obama_late,obama_early/obama_late \\
        --identity-epochs 3 --xseg-epochs 2 --adapter-epochs 2 --max-frames 60 --stages 1   # smoke run
    .venv/bin/python benchmarks/swap_quality.py --preset quality --stages 4   # or --config my.yaml

Media: `--media DIR` (default ../shared/media, see its MANIFEST.md; the run skips with a
message when it is absent). Everything is written under `--work` (default
/tmp/facepipe_swap_quality): data/ (the throwaway data root), store/, models/, dagster_home/,
and results.md, results.json and one contact sheet per pair and stage (target crop | swap |
target in context | swap pasted back). A second run with the same options is all cache hits
up to the evaluation.

How the dev media become pairs (videos, and one photo set as an identity: what a user with only a
handful of photos gets, docs/swap_quality.md "An identity from a handful of photos"):
- every target is the first 75 % of a video; its last 25 % is never built, only evaluated
  (held-out frames in time order, so the temporal ratio sees real motion);
- a cross-person pair takes its identity from a whole other video, or from every photo of a set;
- the same-person control splits one video in three: identity = first 40 %, target = 40-75 %,
  evaluation = last 25 %. Its swaps should stay the person, follow as well as a cross pair,
  and it bounds what "within threshold" means when nothing needs to change.
Cut segments are re-encoded with OpenCV's mp4v (the evaluation frames are read from the
original file).

Each pair is built as facepipe advises a user to build it: where a target turns further than its
identity's faces (german_news -> obama, obama_early -> vox: the adapter's warning), the identity
gets head turns in its settings.toml and the pair in its entry of pairs.toml (README, "Settings of
one partition"; `IDENTITY_SETTINGS`, `PAIR_SETTINGS`); with them the adapter hands the target's pose
over where the turned faces reach it (german_news -> obama; not vox, who turns further still: the
adapter's default `pose_follow`). `--no-settings` builds every pair from the run config alone.
Settings win over the run config, as in any facepipe build.

Staging (--stages K): stage k trains the identity model for k/K of its epochs (resumed from the
stage before) and the adapter for k/K of its epochs (from scratch: it depends on the identity
model's weights). "train_s" is the training time a fresh build of that stage would take: the
identity model's epochs so far + XSeg + this stage's adapter (the engine's per-epoch seconds,
summed over every session: an identity model resumed from an earlier run counts its first epochs
too; checkpoint writes are not counted);
"build_s" is the wall time of every job this pair needed in this stage (preparation included,
cache hits cost ~0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MEDIA = REPO.parent / "shared" / "media"
DEFAULT_WORK = Path("/tmp/facepipe_swap_quality")
MEASURE_SIZE = 256  # target crops are measured at this size (the faces asset's default)
EVAL_SHARE = 0.25  # the last quarter of every target video is held out for evaluation
CONTROL_SPLIT = 0.40  # the control's identity: the first 40 % of its video


@dataclass(frozen=True)
class Segment:
    video: str  # file name under <media>/videos
    start: float  # share of the video's frames
    end: float


@dataclass(frozen=True)
class Photos:
    folder: str  # a photo set under <media>/identities, every photo of it


def source_path(media: Path, source: Segment | Photos) -> Path:
    return media / "videos" / source.video if isinstance(source, Segment) else media / "identities" / source.folder


# Identities as segments of the dev videos or photo sets, targets as segments of videos; pairs as
# (identity, target, kind).
IDENTITIES = {
    "german_news": Segment("german_news_20s.mp4", 0.0, 1.0),
    "kim": Segment("kim_7s.mp4", 0.0, 1.0),
    "obama_early": Segment("obama_20s.mp4", 0.0, CONTROL_SPLIT),
    "deepface_f1": Photos("deepface_f1"),
}
TARGETS = {
    "obama_late": Segment("obama_20s.mp4", CONTROL_SPLIT, 1.0 - EVAL_SHARE),
    "vox": Segment("vox_driving.mp4", 0.0, 1.0 - EVAL_SHARE),
    "mead": Segment("mead_w040_happy.mp4", 0.0, 1.0 - EVAL_SHARE),
}
# Settings of one partition, as the adapter's warning advises them (the target turns further than
# the identity's faces, mirrored: german_news -4..7 deg against obama 2.5..21.6, obama_early -6..20
# against vox 11..37): head turns in those identity models and in those pairs' adapters.
IDENTITY_SETTINGS = {"german_news": {"identity_model": {"turn": 0.5}}, "obama_early": {"identity_model": {"turn": 0.5}}}
PAIR_SETTINGS = {("german_news", "obama_late"): {"lora_adapter": {"turn": 0.5}},
                 ("obama_early", "vox"): {"lora_adapter": {"turn": 0.5}}}
PAIRS = [
    ("obama_early", "obama_late", "same-person control"),
    ("german_news", "obama_late", "cross, man → man"),
    ("obama_early", "vox", "cross, man → man (head motion)"),
    ("kim", "mead", "cross, woman → woman"),
    ("deepface_f1", "mead", "cross, woman's 8 photos → woman"),
]


# ---------------------------------------------------------------------------------------------
# Media and data root


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    from facepipe.media import decode_video

    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    capture.release()
    frames = list(decode_video(path))
    if not frames:
        raise RuntimeError(f"no frames decoded from {path}")
    return frames, fps


def frame_range(count: int, segment: Segment) -> range:
    return range(int(round(segment.start * count)), int(round(segment.end * count)))


def write_photos(source: Path, folder: Path) -> None:
    """Every photo of the set as the folder's media."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted(source.iterdir()):
        if photo.is_file() and not (folder / photo.name).exists():
            (folder / photo.name).write_bytes(photo.read_bytes())


def write_segment(source: Path, segment: Segment, folder: Path) -> None:
    """The segment as the folder's only media: the file itself when whole, else an mp4v cut."""
    folder.mkdir(parents=True, exist_ok=True)
    if segment.start == 0.0 and segment.end == 1.0:
        out = folder / source.name
        if not out.exists():
            out.write_bytes(source.read_bytes())
        return
    out = folder / f"{source.stem}_{int(segment.start * 100):02d}-{int(segment.end * 100):02d}.mp4"
    if out.exists():
        return
    frames, fps = read_video(source)
    picked = [frames[i] for i in frame_range(len(frames), segment)]
    height, width = picked[0].shape[:2]
    partial = out.with_suffix(".partial.mp4")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in picked:
        writer.write(frame)
    writer.release()
    partial.rename(out)


def toml_value(value) -> str:
    """A number, string or boolean as TOML writes it (JSON's spelling is TOML's for these)."""
    return json.dumps(value)


def dev_settings(pairs: list[tuple[str, str, str]]) -> tuple[dict[str, dict], dict[tuple[str, str], dict]]:
    """(identity -> tables, (identity, target) -> tables): the declared settings of these pairs'
    identities and of the pairs themselves (IDENTITY_SETTINGS, PAIR_SETTINGS)."""
    return ({i: IDENTITY_SETTINGS[i] for i in sorted({i for i, _, _ in pairs}) if i in IDENTITY_SETTINGS},
            {(i, t): PAIR_SETTINGS[(i, t)] for i, t, _ in pairs if (i, t) in PAIR_SETTINGS})


def prepare_data_root(media: Path, data: Path, pairs: list[tuple[str, str, str]], identity_settings: dict[str, dict],
                      pair_settings: dict[tuple[str, str], dict]) -> None:
    """The pairs' media segments, pairs.toml (each entry with its ``pair_settings`` tables) and a
    settings.toml for each identity in ``identity_settings``; any other identity's settings.toml an
    earlier run wrote is removed."""
    for identity, target, _ in pairs:
        if isinstance(IDENTITIES[identity], Photos):
            write_photos(source_path(media, IDENTITIES[identity]), data / "identities" / identity)
        else:
            write_segment(source_path(media, IDENTITIES[identity]), IDENTITIES[identity], data / "identities" / identity)
        write_segment(source_path(media, TARGETS[target]), TARGETS[target], data / "targets" / target)
    for identity in sorted({i for i, _, _ in pairs}):
        settings_file = data / "identities" / identity / "settings.toml"
        if identity in identity_settings:
            settings_file.write_text("".join(f"[{table}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
                                             for table, values in identity_settings[identity].items()))
        else:
            settings_file.unlink(missing_ok=True)
    (data / "pairs.toml").write_text("".join(
        f'[[pair]]\nidentity = "{i}"\ntarget = "{t}"\n'
        + "".join(f"{table} = {{ {', '.join(f'{k} = {toml_value(v)}' for k, v in values.items())} }}\n"
                  for table, values in pair_settings.get((i, t), {}).items()) + "\n"
        for i, t, _ in pairs))


# ---------------------------------------------------------------------------------------------
# Run config


def load_run_config(preset: str | None, config_file: Path | None) -> dict:
    """{"ops": {...}}: a preset (facepipe.presets), then a YAML/JSON file on top."""
    ops: dict = {}
    if preset:
        from facepipe.presets import load  # the presets module that `facepipe build --preset` reads

        ops = merge(ops, load(preset).ops)
    if config_file:
        import yaml

        ops = merge(ops, (yaml.safe_load(config_file.read_text()) or {}).get("ops") or {})
    return ops


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def op_config(ops: dict, op: str) -> dict:
    return (ops.get(op) or {}).get("config") or {}


def set_op(ops: dict, op: str, **values) -> dict:
    return merge(ops, {op: {"config": values}})


def default_epochs() -> dict[str, int]:
    from facepipe.assets.identity import IdentityModelConfig
    from facepipe.assets.pair import LoraConfig

    return {"identity__identity_model": IdentityModelConfig().epochs, "pair__lora_adapter": LoraConfig().epochs}


def stage_ops(ops: dict, stage: int, stages: int) -> dict:
    """The run config of one stage: identity model and adapter at stage/stages of their epochs."""
    defaults = default_epochs()
    for op in ("identity__identity_model", "pair__lora_adapter"):
        total = int(op_config(ops, op).get("epochs", defaults[op]))
        ops = set_op(ops, op, epochs=max(1, math.ceil(total * stage / stages)))
    return ops


def job_ops(ops: dict, group: str) -> dict:
    """Only the ops of one job's group (each job accepts its own)."""
    return {"ops": {op: value for op, value in ops.items() if op.startswith(group + "__")},
            "loggers": {"console": {"config": {"log_level": "WARNING"}}}}


# ---------------------------------------------------------------------------------------------
# Building through the asset graph


class Builder:
    def __init__(self, data: Path):
        from dagster import DagsterInstance

        from facepipe.definitions import defs
        from facepipe.partitions import PARTITIONS

        self.defs, self.instance, self.data = defs, DagsterInstance.get(), data
        self.partitions = PARTITIONS

    def register(self, role: str, key: str) -> None:
        name = self.partitions[role].name
        if key not in self.instance.get_dynamic_partitions(name):
            self.instance.add_dynamic_partitions(name, [key])

    def run(self, job: str, key: str, run_config: dict) -> float:
        from facepipe.assets.training import RUNS_ALONE_TAG

        started = time.perf_counter()
        # One run at a time, as `facepipe build` makes them: the trainings take every core.
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, partition_key=key, run_config=run_config, raise_on_error=False,
            tags={RUNS_ALONE_TAG: "true"})
        seconds = time.perf_counter() - started
        print(f"  {job} [{key}]: {'ok' if result.success else 'FAILED'} in {seconds:.1f}s", flush=True)
        if not result.success:
            failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            message = str(failures[0].event_specific_data.error.message) if failures else "see the run log"
            raise RuntimeError(f"{job} [{key}] failed: {message.strip()}")
        return seconds


# ---------------------------------------------------------------------------------------------
# Evaluation the FaceFusion way


RANGE_MEASURES = ("yaw", "pitch", "mouth")


def ranges(identity_faces, evaluation) -> dict[str, dict[str, list[float]]]:
    """5th-95th percentile of yaw, pitch (degrees) and mouth opening over the identity's training
    faces, the held-out targets and their swaps: where the swaps stop following, is it where the
    identity's own faces stop?"""
    from facepipe.train.balance import expression_measures

    measures = expression_measures(np.asarray(identity_faces.landmarks), identity_faces.crops.shape[1])
    sides = {"identity": {"yaw": measures[:, 3], "pitch": measures[:, 4], "mouth": measures[:, 0]}}
    for side, faces in (("target", evaluation.target), ("swap", evaluation.swap)):
        sides[side] = {"yaw": faces.pose[:, 0], "pitch": faces.pose[:, 1], "mouth": faces.mouth}
    return {side: {name: [round(float(np.nanpercentile(values, q)), 3 if name == "mouth" else 1) for q in (5, 95)]
                   for name, values in columns.items()} for side, columns in sides.items()}


def held_out_frames(media: Path, target: str, count: int) -> list[tuple[int, np.ndarray]]:
    """Up to ``count`` frames of the target video's held-out tail, evenly strided, in time order."""
    frames, _ = read_video(media / "videos" / TARGETS[target].video)
    tail = range(int(round(TARGETS[target].end * len(frames))), len(frames))
    stride = max(1, len(tail) // count)
    return [(i, frames[i]) for i in list(tail)[::stride][:count]]


def context_points(points5: np.ndarray, zoom: float = 1.7) -> np.ndarray:
    """The five points spread from their centre: the same warp then shows more around the face."""
    centre = points5.mean(axis=0)
    return centre + (points5 - centre) * zoom


def label(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    cv2.putText(tile, text, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def summarised(evaluation) -> dict:
    """The evaluation's summary, each following correlation with its 90 % interval over the faces
    (``evaluate.following_intervals``): what a single run's figure can be read to within."""
    from facepipe.evaluate import following_intervals

    intervals = following_intervals(evaluation.swap, evaluation.target)
    return {**evaluation.summary(), "intervals": {name: [round(v, 3) if np.isfinite(v) else None for v in bounds]
                                                  for name, bounds in intervals.items()}}


def evaluate_pair(settings: dict, media: Path, identity: str, target: str, eval_frames: int, sheet_path: Path) -> dict:
    import onnxruntime as ort

    from facepipe.align import five_points
    from facepipe.embed import get_embedder
    from facepipe.evaluate import (
        evaluate_swaps,
        facefusion_crop,
        facefusion_input,
        facefusion_match_colour,
        facefusion_output,
        facefusion_paste_back,
        facefusion_paste_mask,
        face_alone,
        mean_identity_face,
        mean_identity_face_alone,
    )
    from facepipe.faces import FaceSet
    from facepipe.landmarks import detect_landmarks
    from facepipe.models.swap import DFM_INPUT, DFM_MORPH_INPUT, dfm_input
    from facepipe.store import ArtifactStore

    store = ArtifactStore(settings["store"])
    profile = json.loads((store.current("identity/identity_profile", identity).path / "profile.json").read_text())
    identity_faces = FaceSet.load(store.current("identity/curated_faces", identity).path)
    identity_crops = identity_faces.crops
    session = ort.InferenceSession(str(Path(settings["models"]) / "trained" / f"{identity}_{target}.dfm"),
                                   providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]

    def run(model_input: np.ndarray) -> list[np.ndarray]:
        # As both runtimes call it: inputs by name (morph_value:0 at 1, the full swap, when the
        # model has it), outputs by position.
        feeds = {DFM_INPUT: model_input}
        if DFM_MORPH_INPUT in [i.name for i in session.get_inputs()]:
            feeds[DFM_MORPH_INPUT] = np.ones(1, dtype=np.float32)
        return session.run(None, feeds)

    frames = held_out_frames(media, target, eval_frames)
    found = detect_landmarks([(frame, "held-out") for _, frame in frames])
    mean_face = mean_identity_face(identity_crops)
    baseline_face = mean_identity_face_alone(identity_crops, identity_faces.masks)
    baseline_at_size = cv2.resize(mean_face, (size, size), interpolation=cv2.INTER_AREA)
    targets, swaps, plain_swaps, model_crops, rows = [], [], [], [], []
    copies = []  # the target's own face at the model's size, alone: a perfect swap's ceiling
    pasted_swaps, pasted_baselines, pasted_copies = [], [], []  # the pasted frames, cropped as the targets are
    for (frame_index, frame), points, ok in zip(frames, found.points, found.detected):
        if not ok:
            continue
        five = five_points(points)
        model_crop, matrix = facefusion_crop(frame, five, size)
        face_mask, celeb_face, celeb_mask = run(facefusion_input(model_crop[None]))
        swap = facefusion_output(celeb_face[0])
        alone = face_alone(swap, celeb_mask[0][..., 0])  # what is measured: the face the model paints (see evaluate)
        # What a FaceFusion user sees: the swap in the replaced face's colours, pasted back. The
        # metrics read the model's own output (``swap``), so the colour matching flatters none of them.
        paste_mask = facefusion_paste_mask(face_mask[0], celeb_mask[0])

        def pasted_back(face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """``face`` pasted into this frame through the swap's mask: the frame, and its crop as
            the targets are cropped (what the pasted columns measure)."""
            pasted_frame = facefusion_paste_back(frame, face, paste_mask, matrix)
            return pasted_frame, facefusion_crop(pasted_frame, five, MEASURE_SIZE)[0]

        pasted, pasted_crop = pasted_back(facefusion_match_colour(model_crop, swap))
        pasted_swaps.append(pasted_crop)
        # The mean identity face pasted the same way (same mask, same colour matching): what the
        # pasted swap is compared with, as the raw swap is with the mean face itself.
        pasted_baselines.append(pasted_back(facefusion_match_colour(model_crop, baseline_at_size))[1])
        # The target's own crop at the model's size pasted back the same way: how sharp any face
        # of this size can look once the runtime enlarges it into the frame (the pasted ceiling).
        pasted_copies.append(pasted_back(model_crop)[1])
        # The same crop without FaceFusion's sharpening: what DeepFaceLive feeds (uint8 / 255).
        _, plain_face, plain_mask = run(dfm_input(model_crop))
        plain_swaps.append(face_alone(facefusion_output(plain_face[0]), plain_mask[0][..., 0]))
        copies.append(face_alone(model_crop, celeb_mask[0][..., 0]))
        model_crops.append(model_crop)
        targets.append(facefusion_crop(frame, five, MEASURE_SIZE)[0])
        swaps.append(alone)
        rows.append((frame_index, frame, pasted, five))
    if len(targets) < 3:
        raise RuntimeError(f"{identity}|{target}: MediaPipe found a face in only {len(targets)} held-out frames")
    embedder = get_embedder(profile["embedder"]).prepare()
    target_crops = np.stack(targets)

    def evaluated(candidates: list[np.ndarray]):
        return evaluate_swaps(target_crops, np.stack(candidates), profile, embedder, baseline_face)

    evaluation = evaluated(swaps)
    summary = summarised(evaluation)
    summary["ranges"] = ranges(identity_faces, evaluation)
    summary["unsharpened"] = summarised(evaluated(plain_swaps))
    # What a viewer judges: the frame with the swap pasted back (the target's hair, ears and face
    # shape around it, its colours matched), beside the mean identity face pasted the same way.
    # Measured at MEASURE_SIZE like the targets, sharpness included.
    summary["pasted"] = summarised(evaluated(pasted_swaps))
    # A swap that copied the target's face perfectly, at the model's size and through its mask: how
    # far following and sharpness can go at this size on this target (the landmarker reads a 96 px
    # face less surely than a 256 px one, and a narrow range of turns leaves little to correlate).
    summary["target_copy"] = summarised(evaluated(copies))
    summary["pasted_baseline"] = summarised(evaluated(pasted_baselines))
    summary["pasted_copy"] = summarised(evaluated(pasted_copies))
    # How much the feeding changes the answer: mean absolute difference (0-255) between the swaps
    # of the sharpened and the plain input, beside how much the inputs themselves differ.
    summary["feeding_gap"] = {
        "swaps": float(np.mean([np.abs(a.astype(np.float64) - b).mean() for a, b in zip(swaps, plain_swaps)])),
        "inputs": float(np.mean([np.abs(facefusion_input(c[None])[0] - dfm_input(c)[0]).mean() * 255 for c in model_crops])),
    }
    summary["held_out_frames"] = [r[0] for r in rows]
    summary["model_size"] = int(size)

    tiles = []
    for pick in np.unique(np.linspace(0, len(rows) - 1, num=min(6, len(rows))).round().astype(int)):
        frame_index, frame, pasted, five = rows[pick]
        wide = context_points(five)
        tiles.append(np.hstack([
            label(targets[pick], f"target #{frame_index}"),
            label(cv2.resize(swaps[pick], (MEASURE_SIZE, MEASURE_SIZE), interpolation=cv2.INTER_NEAREST), f"swap {size}px, alone"),
            label(facefusion_crop(frame, wide, MEASURE_SIZE)[0], "target (context)"),
            label(facefusion_crop(pasted, wide, MEASURE_SIZE)[0], "pasted back"),
        ]))
    cv2.imwrite(str(sheet_path), np.vstack(tiles))
    return summary


# ---------------------------------------------------------------------------------------------
# Report


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metric_rows(m: dict) -> list[tuple[str, str, str]]:
    ident, sw, bl, image = m["identity"], m["swap_following"], m["baseline_following"], m.get("image", {})
    pct = lambda v: "–" if v is None else f"{100 * v:.0f} %"  # noqa: E731

    def corr(name: str, key: str) -> str:
        bounds = m.get("intervals", {}).get(name)
        if not bounds or None in bounds:
            return fmt(sw.get(key))
        return f"{fmt(sw.get(key))} ({fmt(bounds[0])}..{fmt(bounds[1])})"

    return [
        ("faces compared (detected in both)", f"{sw['faces_compared']}/{m['faces']}", f"{bl['faces_compared']}/{m['faces']}"),
        (f"within threshold ({ident['distance_threshold']}) of the identity profile", pct(ident["swap_within_threshold"]),
         pct(ident["baseline_within_threshold"])),
        ("closer to the identity profile than to its target face", pct(ident["swap_closer_to_identity_than_target"]),
         pct(ident.get("baseline_closer_to_identity_than_target"))),
        (f"distance to the profile, mean (targets: {fmt(ident['target_distance_mean'], 3)})",
         fmt(ident["swap_distance_mean"], 3), fmt(ident["baseline_distance_mean"], 3)),
        ("mouth opening, correlation with the target (90 % interval over the faces)", corr("mouth", "mouth_corr"),
         fmt(bl.get("mouth_corr"))),
        ("eye opening, correlation", corr("eyes", "eye_corr"), fmt(bl.get("eye_corr"))),
        ("yaw, correlation", corr("yaw", "yaw_corr"), fmt(bl.get("yaw_corr"))),
        ("pitch, correlation", corr("pitch", "pitch_corr"), fmt(bl.get("pitch_corr"))),
        ("span of mouth opening / yaw / pitch, over the target's (5th-95th percentile; 1: as wide)",
         " / ".join(fmt(sw.get(f"{name}_span")) for name in ("mouth", "yaw", "pitch")),
         " / ".join(fmt(bl.get(f"{name}_span")) for name in ("mouth", "yaw", "pitch"))),
        ("yaw / pitch mean abs. error (deg)", f"{fmt(sw.get('yaw_mae_deg'), 1)} / {fmt(sw.get('pitch_mae_deg'), 1)}",
         f"{fmt(bl.get('yaw_mae_deg'), 1)} / {fmt(bl.get('pitch_mae_deg'), 1)}"),
        ("sharpness ratio vs target (median, central face)", fmt(image.get("sharpness_ratio", {}).get("swap")),
         fmt(image.get("sharpness_ratio", {}).get("baseline"))),
        (f"checkerboard, period-2 RMS in grey levels (target: {fmt(image.get('checkerboard', {}).get('target'))})",
         fmt(image.get("checkerboard", {}).get("swap")), fmt(image.get("checkerboard", {}).get("baseline"))),
        ("temporal ratio (frame-to-frame change vs target)", fmt(image.get("temporal_ratio", {}).get("swap")),
         fmt(image.get("temporal_ratio", {}).get("baseline"))),
        ("skin tone gap (ΔE of the central face's mean colour against the target's, median)",
         fmt(image.get("tone_gap", {}).get("swap"), 1), fmt(image.get("tone_gap", {}).get("baseline"), 1)),
    ]


def over_time_row(stage: dict) -> str:
    m = stage["metrics"]
    ident, sw, image = m["identity"], m["swap_following"], m.get("image", {})
    cells = [stage["stage"], f"{stage['epochs']['identity']}/{stage['epochs']['adapter']}", fmt(stage["train_s"], 0),
             fmt(ident["swap_within_threshold"]), fmt(ident["swap_closer_to_identity_than_target"]),
             fmt(sw.get("mouth_corr")), fmt(sw.get("eye_corr")), fmt(sw.get("yaw_corr")), fmt(sw.get("pitch_corr")),
             fmt(image.get("sharpness_ratio", {}).get("swap")), fmt(image.get("checkerboard", {}).get("swap")),
             fmt(image.get("temporal_ratio", {}).get("swap"))]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(results: dict, options: dict) -> str:
    lines = ["# Swap quality (FaceFusion deep_swapper feeding; DeepFaceLive's, without the sharpening, beside it)", "",
             f"Options: `{json.dumps(options, sort_keys=True)}`", ""]
    for pair, entry in results.items():
        stages = entry["stages"]
        last = stages[-1]
        lines += [f"## {pair} ({entry['kind']})", "",
                  f"Final stage {last['stage']}: identity model {last['epochs']['identity']} epochs, adapter "
                  f"{last['epochs']['adapter']} epochs, model {last['metrics']['model_size']} px; training "
                  f"{last['train_s']:.0f} s (identity {last['times']['identity_model']:.0f} s, XSeg "
                  f"{last['times']['xseg_model']:.0f} s, adapter {last['times']['lora_adapter']:.0f} s); build wall time "
                  f"this stage {last['build_s']:.0f} s. {len(last['metrics']['held_out_frames'])} held-out frames. "
                  f"Contact sheet: `{last['contact_sheet']}`.", "",
                  "| metric | swap (FaceFusion: sharpened input) | swap (DeepFaceLive: unsharpened input) | "
                  "paste mean identity | swap pasted back (what a viewer sees) | mean identity pasted back | "
                  "the target's own face at the model's size (a perfect copy: the ceiling) | "
                  "that face pasted back (the ceiling of what a viewer sees) |",
                  "|---|---|---|---|---|---|---|---|"]
        columns = {name: metric_rows(last["metrics"][name]) if name in last["metrics"] else None
                   for name in ("unsharpened", "pasted", "pasted_baseline", "target_copy", "pasted_copy")}
        cell = lambda name, row: columns[name][row][1] if columns[name] else "–"  # noqa: E731
        lines += [f"| {name} | {swap} | {cell('unsharpened', row)} | {baseline} | {cell('pasted', row)} | "
                  f"{cell('pasted_baseline', row)} | {cell('target_copy', row)} | {cell('pasted_copy', row)} |" for row, (name, swap, baseline) in enumerate(metric_rows(last["metrics"]))]
        if "ranges" in last["metrics"]:
            spans = last["metrics"]["ranges"]
            lines += ["", "What each side shows (5th-95th percentile): " + "; ".join(
                f"{name} identity's faces {spans['identity'][name][0]:g}..{spans['identity'][name][1]:g}, "
                f"targets {spans['target'][name][0]:g}..{spans['target'][name][1]:g}, "
                f"swaps {spans['swap'][name][0]:g}..{spans['swap'][name][1]:g}" for name in RANGE_MEASURES)
                + ". A swap can only paint what the identity model has seen."]
        if "feeding_gap" in last["metrics"]:
            gap = last["metrics"]["feeding_gap"]
            lines += ["", f"Sharpened vs plain input: the swaps differ by {gap['swaps']:.2f} grey levels (mean absolute, "
                          f"0-255), the inputs by {gap['inputs']:.2f}."]
        if len(stages) > 1:
            lines += ["", "Quality against training time:", "",
                      "| stage | epochs id/adapter | train s | within thr. | closer to id. | mouth r | eye r | yaw r | "
                      "pitch r | sharpness | checker | temporal |", "|" + "---|" * 12]
            lines += [over_time_row(stage) for stage in stages]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def training_seconds(store, key: str, asset: str) -> float:
    """Seconds of training behind the current output: every epoch's, sessions before a resume
    included (the record's `epochs_s`)."""
    return float(store.current(asset, key).metadata["epochs_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA, help="dev media folder (MANIFEST.md layout)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="data root, store, models and results go here")
    parser.add_argument("--pairs", default="all", help="identity/target,... from the declared pairs (default: all)")
    parser.add_argument("--preset", help="a facepipe run-config preset (facepipe/presets/<name>.yaml)")
    parser.add_argument("--config", type=Path, help="a run-config file (YAML/JSON, Dagster's {ops: ...} shape)")
    parser.add_argument("--identity-epochs", type=int)
    parser.add_argument("--xseg-epochs", type=int)
    parser.add_argument("--adapter-epochs", type=int)
    parser.add_argument("--no-settings", action="store_true",
                        help="build without the dev partitions' own settings (IDENTITY_SETTINGS, PAIR_SETTINGS)")
    parser.add_argument("--max-frames", type=int, help="frames sampled per identity and target")
    parser.add_argument("--stages", type=int, default=3, help="evaluate after each of this many training stages")
    parser.add_argument("--eval-frames", type=int, default=30, help="held-out target frames per pair")
    args = parser.parse_args(argv)

    if not (args.media / "videos").is_dir():
        print(f"swap_quality: no dev media at {args.media} (expected videos/ as in its MANIFEST.md); skipped. "
              f"Pass --media DIR.")
        return 0
    pairs = PAIRS if args.pairs == "all" else [p for p in PAIRS if f"{p[0]}/{p[1]}" in args.pairs.split(",")]
    if not pairs:
        print(f"swap_quality: no declared pair matches --pairs {args.pairs}; pairs: "
              + ", ".join(f"{i}/{t}" for i, t, _ in PAIRS), file=sys.stderr)
        return 2
    sources = {source_path(args.media, s) for i, t, _ in pairs for s in (IDENTITIES[i], TARGETS[t])}
    missing = sorted(str(path.relative_to(args.media)) for path in sources if not path.exists())
    if missing:
        print(f"swap_quality: {args.media} lacks {', '.join(missing)}; skipped.")
        return 0

    work = args.work.resolve()
    settings = {"data": work / "data", "store": work / "store", "models": work / "models"}
    # Before facepipe's resources are imported: their defaults read these (issue 12).
    os.environ.update({"FACEPIPE_DATA": str(settings["data"]), "FACEPIPE_STORE": str(settings["store"]),
                       "FACEPIPE_MODELS": str(settings["models"]), "DAGSTER_HOME": str(work / "dagster_home")})
    os.environ.setdefault("FACEPIPE_AUTOMATION", "off")
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    (work / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    identity_settings, pair_settings = ({}, {}) if args.no_settings else dev_settings(pairs)
    prepare_data_root(args.media, settings["data"], pairs, identity_settings, pair_settings)

    from facepipe.automation.discovery import PAIR_JOB, role_job_name
    from facepipe.pairs import pair_key
    from facepipe.store import ArtifactStore

    ops = load_run_config(args.preset, args.config)
    for op, value in (("identity__identity_model", args.identity_epochs), ("target__xseg_model", args.xseg_epochs),
                      ("pair__lora_adapter", args.adapter_epochs)):
        if value is not None:
            ops = set_op(ops, op, epochs=value)
    if args.max_frames is not None:
        ops = set_op(set_op(ops, "identity__frames", max_frames=args.max_frames), "target__frames", max_frames=args.max_frames)
    options = {"pairs": [f"{i}|{t}" for i, t, _ in pairs], "ops": ops, "stages": args.stages,
               "eval_frames": args.eval_frames, "preset": args.preset, "config": str(args.config) if args.config else None,
               "partition_settings": {**identity_settings, **{pair_key(i, t): v for (i, t), v in pair_settings.items()}}}

    builder = Builder(settings["data"])
    store = ArtifactStore(settings["store"])
    results: dict = {pair_key(i, t): {"kind": kind, "stages": []} for i, t, kind in pairs}
    for stage in range(1, args.stages + 1):
        run_ops = stage_ops(ops, stage, args.stages)
        print(f"stage {stage}/{args.stages}: identity model {op_config(run_ops, 'identity__identity_model')['epochs']} "
              f"epochs, adapter {op_config(run_ops, 'pair__lora_adapter')['epochs']} epochs", flush=True)
        walls: dict = {}
        for role, keys in (("identity", sorted({i for i, _, _ in pairs})), ("target", sorted({t for _, t, _ in pairs}))):
            for key in keys:
                builder.register(role, key)
                walls[(role, key)] = builder.run(role_job_name(role), key, job_ops(run_ops, role))
        for identity, target, _ in pairs:
            key = pair_key(identity, target)
            pair_wall = builder.run(PAIR_JOB, key, job_ops(run_ops, "pair"))
            times = {"identity_model": training_seconds(store, identity, "identity/identity_model"),
                     "xseg_model": training_seconds(store, target, "target/xseg_model"),
                     "lora_adapter": training_seconds(store, key, "pair/lora_adapter")}
            sheet = work / f"contact_{identity}_{target}_stage{stage}.png"
            started = time.perf_counter()
            metrics = evaluate_pair(settings, args.media, identity, target, args.eval_frames, sheet)
            print(f"  evaluated {key} in {time.perf_counter() - started:.1f}s", flush=True)
            results[key]["stages"].append({
                "stage": stage, "epochs": {"identity": op_config(run_ops, "identity__identity_model")["epochs"],
                                           "adapter": op_config(run_ops, "pair__lora_adapter")["epochs"]},
                "train_s": sum(times.values()), "times": times, "contact_sheet": str(sheet),
                "build_s": walls[("identity", identity)] + walls[("target", target)] + pair_wall, "metrics": metrics})
        (work / "results.json").write_text(json.dumps({"options": options, "results": results}, indent=1, default=str))
        (work / "results.md").write_text(report(results, options))
    print(report(results, options))
    print(f"written: {work / 'results.md'}, {work / 'results.json'}, contact sheets {work}/contact_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
