"""Curated face sets, one asset per role: `<role>/curated_faces`, between faces and everything
that trains on or measures faces (identity profile and model, XSeg, target masks, pair).

The asset embeds the aligned faces, decides with facepipe.curation, applies the user's
curation.toml (facepipe.curation_file) and writes the kept faces as a face set in the faces
asset's own format, beside curation.json (every face, kept or dropped, with its reasons and
measures) and dropped.png (the dropped faces labelled with their reason, shown in the UI).
"""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from dagster import AssetExecutionContext, AssetKey, Config, Failure, MaterializeResult, asset

from facepipe.assets.failures import failure_policy
from facepipe.assets.stage import DROPPED_FILE, PREVIEW_FILE, reads_outside, run_stage, upstream
from facepipe.curation import REASONS, Curation, Thresholds, curate
from facepipe.curation_file import curation_path, overrides_digest, read_overrides, resolve
from facepipe.embed import EmbedderChoice, get_embedder
from facepipe.faces import FaceSet, resize_crops, write_subset
from facepipe.labels import frame_stem
from facepipe.partitions import PARTITIONS, media_dir
from facepipe.preview import contact_sheet, evenly_spaced, labelled, outline, write_png
from facepipe.profile import profile_json_bytes
from facepipe.resources import FacepipeSettings
from facepipe.store import Artifact

CURATED_FACES_VERSION = "1"
CURATION_JSON = "curation.json"
EMBEDDINGS_FILE = "embeddings.npy"  # the kept faces' embeddings, row by row, for the identity profile
CURATION_FORMAT_VERSION = 1
SHEET_LIMIT = 64  # dropped faces shown on the sheet (spread over all of them)
SHEET_THUMB = 128
TABLE_LIMIT = 100  # dropped faces listed in the metadata table


class EmbedderConfig(Config):
    embedder: EmbedderChoice = "auto"  # auto = arcface when a model pack is on disk, else dlib
    arcface_pack: str = ""  # insightface model pack folder (default ~/.insightface/models/buffalo_l)


class CurationConfig(EmbedderConfig):
    """Which faces are too poor to train on (see facepipe.curation); 0 turns a test off."""

    min_face_px: float = Thresholds.min_face_px  # face size in its source frame (larger side of the landmark box)
    min_brightness: float = Thresholds.min_brightness  # mean grey level of the face, 0-255
    blur_ratio: float = Thresholds.blur_ratio  # sharpness below this share of the set's median
    duplicate_grey_levels: float = Thresholds.duplicate_grey_levels  # mean |difference| of 32 px thumbnails

    def thresholds(self) -> Thresholds:
        return Thresholds(self.min_face_px, self.min_brightness, self.blur_ratio, self.duplicate_grey_levels)


def embedder_version(config: dict) -> str:
    """Which embedder a config picks, as a fingerprint input (auto's pick depends on the machine)."""
    return json.dumps(get_embedder(config["embedder"], config["arcface_pack"]).describe(), sort_keys=True)


def face_stems(face_set: FaceSet) -> list[str]:
    """Each face's frame name, as curation.toml and user masks name it."""
    index = face_set.index
    return [frame_stem(s, k, i) for s, k, i in zip(index.source, index.kind, index.source_frame_index)]


def dropped_frames(curated: Path) -> list[str]:
    """Frame names of the faces a curated face set (its folder) left out."""
    record = json.loads((Path(curated) / CURATION_JSON).read_text())
    return [face["frame"] for face in record["faces"] if not face["kept"]]


def curated_embeddings(curated: Path, embedder: dict) -> np.ndarray | None:
    """The kept faces' embeddings as curation computed them, when `embedder` (a `describe()`) is
    the one curation used (the same model file); None otherwise. Faces are embedded one at a time,
    so these are the rows the profile would compute itself."""
    record = json.loads((Path(curated) / CURATION_JSON).read_text())
    same = record["embedder"] == embedder["name"] and record["embedder_model_hash"] == embedder["model_hash"]
    return np.load(Path(curated) / EMBEDDINGS_FILE) if same else None


def curation_record(role: str, stems: list[str], result: Curation, thresholds: Thresholds, embedder: dict,
                    unmatched: list[str]) -> dict:
    """curation.json: the thresholds, the counts, and every face with its decision and measures."""
    measures = result.measures
    faces = [{"frame": stem, "kept": bool(result.kept[i]), "reasons": result.reasons[i],
              "kept_by_user": i in result.kept_by_user,
              **{name: float(values[i]) for name, values in measures.items()}}
             for i, stem in enumerate(stems)]
    return {"format_version": CURATION_FORMAT_VERSION, "role": role, "thresholds": asdict(thresholds),
            "identity_cutoff": result.identity_cutoff, "embedder": embedder["name"],
            "embedder_model_hash": embedder["model_hash"], "faces_in": len(stems),
            "faces_kept": int(result.kept.sum()), "dropped_by_reason": result.counts(),
            "override_unmatched": unmatched, "faces": faces}


def dropped_table(stems: list[str], result: Curation) -> str:
    """Markdown table of the dropped faces (the first TABLE_LIMIT) for the UI."""
    dropped = np.flatnonzero(~result.kept)
    if not len(dropped):
        return "No face dropped."
    m = result.measures
    lines = ["| frame | dropped for | all reasons | face px | brightness | sharpness | identity distance |",
             "|---|---|---|---|---|---|---|"]
    for i in dropped[:TABLE_LIMIT]:
        lines.append(f"| {stems[i]} | {result.reasons[i][0]} | {', '.join(result.reasons[i])} | {m['face_px'][i]:.0f} | "
                     f"{m['brightness'][i]:.0f} | {m['sharpness'][i]:.1f} | {m['identity_distance'][i]:.3f} |")
    if len(dropped) > TABLE_LIMIT:
        lines.append(f"\n... and {len(dropped) - TABLE_LIMIT} more in {CURATION_JSON}")
    return "\n".join(lines)


def dropped_sheet(face_set: FaceSet, stems: list[str], result: Curation) -> np.ndarray | None:
    """Contact sheet of the dropped faces, each labelled with its reason and frame name."""
    dropped = np.flatnonzero(~result.kept)
    if not len(dropped):
        return None
    shown = dropped[evenly_spaced(len(dropped), SHEET_LIMIT)]
    thumbs = resize_crops(np.stack([face_set.crops[i] for i in shown]), SHEET_THUMB)  # label at the size shown
    tiles = [labelled(thumb, [result.reasons[i][0], stems[i][-20:]]) for thumb, i in zip(thumbs, shown)]
    return contact_sheet(tiles, columns=8, thumb=SHEET_THUMB)


def build_curation_asset(role: str):
    """`<role>/curated_faces` for one role."""

    @reads_outside(f"{role}/curated_faces")
    def curation_inputs(settings: FacepipeSettings, key: str, config: dict) -> dict[str, str]:
        """The embedder that judges who is who, and the user's curation.toml."""
        return {"embedder": embedder_version(config),
                "curation_file": overrides_digest(media_dir(settings.data_path, role, key))}

    @asset(key=AssetKey([role, "curated_faces"]), ins={"faces": upstream(f"{role}/faces")},
           partitions_def=PARTITIONS[role], group_name=role, code_version=CURATED_FACES_VERSION,
           description="The faces worth training on: other people, faces too small, too dark or too blurry, and "
                       "duplicates dropped, each with its reason (curation.json, dropped.png); curation.toml in the "
                       "partition folder keeps or drops faces by frame. Same files as faces.")
    @failure_policy
    def curated_faces(context: AssetExecutionContext, config: CurationConfig, settings: FacepipeSettings,
                      faces: Artifact) -> MaterializeResult:
        key = context.partition_key
        folder = media_dir(settings.data_path, role, key)
        overrides = read_overrides(folder)  # a malformed file fails here, naming it (CurationFileError)
        embedder = get_embedder(config.embedder, config.arcface_pack)
        described = embedder.describe()
        thresholds = config.thresholds()

        def write(out: Path) -> dict:
            face_set = FaceSet.load(faces.path)
            stems = face_stems(face_set)
            keep, drop, unmatched = resolve(overrides, stems)
            for entry in unmatched:
                context.log.warning(f"{curation_path(folder)}: {entry!r} names no face of {role} '{key}' (not a "
                                    "sampled frame, or no face found in it); left alone")
            embeddings = embedder.prepare().embed_aligned(
                face_set.crops, lambda done, total: context.log.info(f"embedded {done}/{total} faces"))
            matrices = face_set.index[[f"m{i}" for i in range(6)]].to_numpy().reshape(-1, 2, 3)
            result = curate(face_set.crops, face_set.masks, face_set.landmarks, matrices, embeddings,
                            described["metric"], float(described["distance_threshold"]), role, thresholds, keep, drop)
            counts = {reason: n for reason, n in result.counts().items() if n}
            if not result.kept.any():
                raise Failure(f"{role} '{key}': curation dropped all {len(stems)} faces ({counts}). Keep faces by "
                              f"frame in {curation_path(folder)} (see data/README.md) or lower the thresholds "
                              f"({role}__curated_faces config).", allow_retries=False)
            kept = np.flatnonzero(result.kept)
            write_subset(face_set, kept, out)
            np.save(out / EMBEDDINGS_FILE, embeddings[kept].astype(np.float32))
            record = curation_record(role, stems, result, thresholds, described, unmatched)
            (out / CURATION_JSON).write_bytes(profile_json_bytes(record))
            sheet = dropped_sheet(face_set, stems, result)
            if sheet is not None:
                write_png(out / DROPPED_FILE, sheet)
            picks = kept[evenly_spaced(len(kept), 32)]
            write_png(out / PREVIEW_FILE, contact_sheet([outline(face_set.crops[i], face_set.masks[i]) for i in picks]))
            summary = ", ".join(f"{n} {reason}" for reason, n in counts.items()) or "none"
            context.log.info(f"{role} '{key}': kept {len(kept)} of {len(stems)} faces; dropped: {summary}")
            return {"faces_in": len(stems), "faces_kept": len(kept), "faces_dropped": len(stems) - len(kept),
                    "dropped_by_reason": {reason: counts.get(reason, 0) for reason in REASONS},
                    "dropped_frames": {reason: [stems[i] for i in np.flatnonzero(~result.kept) if result.reasons[i][0] == reason]
                                       for reason in counts},
                    "kept_by_user": [stems[i] for i in result.kept_by_user],
                    "overrides": {"file": str(curation_path(folder)), "keep": len(overrides.keep),
                                  "drop": len(overrides.drop)} if overrides else "none (no curation.toml)",
                    "override_unmatched": unmatched, "embedder": described["name"], "thresholds": asdict(thresholds),
                    "dropped_faces_md": dropped_table(stems, result)}

        return run_stage(context, settings, config.model_dump(), write)

    return curated_faces
