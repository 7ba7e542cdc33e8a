"""What face-set curation drops on real media: the dev videos and photo sets, and the sample.

Builds `<role>/curated_faces` through the asset graph in a throwaway project (media copied in,
never written where they are) and prints, per partition, the faces in, kept, and dropped per
reason, then writes the dropped-faces sheets beside the table. Every video is a target, every
photo folder an identity; the embedded sample is built too (identity `hopper`, target
`astronaut`), since the README demo and the tests rely on it keeping its faces; and one target,
`mixed_cut`, is cut from the dev videos the way a performance clip with cutaways is (another
person, a dark shot, a motion-blurred pan, a wide shot, a freeze frame), and one identity,
`mixed_photos`, a photo set with two other people's photos and a copy mixed in, to see each
reason fire on real faces.

    .venv/bin/python benchmarks/curation_dev.py                      # ../shared/media
    .venv/bin/python benchmarks/curation_dev.py --media /path/to/media --max-frames 200

Skips cleanly (exit 0) when the media folder is absent.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def partitions(media: Path, data: Path) -> list[tuple[str, str]]:
    """Copy the dev media into a data root: one target per video, one identity per photo folder."""
    from facepipe.sample import IDENTITY_KEY, TARGET_KEY, build_sample

    found = []
    for video in sorted((media / "videos").glob("*.mp4")):
        key = video.stem.lower().replace(".", "_")
        folder = data / "targets" / key
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, folder / video.name)
        found.append(("target", key))
    for person in sorted(p for p in (media / "identities").iterdir() if p.is_dir()):
        folder = data / "identities" / person.name
        folder.mkdir(parents=True, exist_ok=True)
        for photo in sorted(person.iterdir()):
            shutil.copy(photo, folder / photo.name)
        found.append(("identity", person.name))
    build_sample(data)
    return [*found, ("identity", IDENTITY_KEY), ("target", TARGET_KEY), mixed_target(media, data),
            mixed_identity(media, data)]


MIXED_KEY = "mixed_cut"


def mixed_target(media: Path, data: Path) -> tuple[str, str]:
    """A target cut the way the issue's performance clip was: the main person (may_5s) with cuts
    to another person (german_news_20s), a dark shot, a motion-blurred shot, a wide shot where
    the face is small, and a freeze frame. Built from the dev videos, so every face is real."""
    import cv2
    import numpy as np

    from facepipe.media import decode_video, write_video

    folder = data / "targets" / MIXED_KEY
    folder.mkdir(parents=True, exist_ok=True)
    main_person = list(decode_video(media / "videos" / "may_5s.mp4"))
    other = list(decode_video(media / "videos" / "german_news_20s.mp4"))[:30]
    kernel = np.zeros((1, 21), np.float32)
    kernel[0, :] = 1 / 21  # a horizontal pan: 21 px of motion blur
    wide = []
    for frame in main_person[80:95]:  # the face about 55 px high in a frame half the size
        h, w = frame.shape[:2]
        canvas = np.zeros((h // 2, w // 2, 3), np.uint8)
        small = cv2.resize(frame, (w // 5, h // 5), interpolation=cv2.INTER_AREA)
        canvas[h // 8:h // 8 + small.shape[0], w // 6:w // 6 + small.shape[1]] = small
        wide.append(canvas)
    shots = {
        "a_main.mp4": main_person[:60],
        "b_cutaway.mp4": other,
        "c_dark.mp4": [(frame * 0.18).astype(np.uint8) for frame in main_person[60:70]],
        "d_pan.mp4": [cv2.filter2D(frame, -1, kernel) for frame in main_person[70:80]],
        "e_wide.mp4": wide,
        "f_freeze.mp4": [main_person[100]] * 10,
    }
    for name, frames in shots.items():
        write_video(folder / name, frames, 25)
    return "target", MIXED_KEY


MIXED_PHOTOS_KEY = "mixed_photos"


def mixed_identity(media: Path, data: Path) -> tuple[str, str]:
    """An identity photo set with two photos of other people mixed in (deepface_f1 plus one photo
    each of deepface_m1 and lfw_colin_powell) and one photo twice under another name."""
    folder = data / "identities" / MIXED_PHOTOS_KEY
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted((media / "identities" / "deepface_f1").iterdir()):
        shutil.copy(photo, folder / photo.name)
    shutil.copy(media / "identities" / "deepface_f1" / "2.jpg", folder / "2_again.jpg")
    shutil.copy(media / "identities" / "deepface_m1" / "1.jpg", folder / "other_m1.jpg")
    shutil.copy(media / "identities" / "lfw_colin_powell" / "1.jpg", folder / "other_lfw.jpg")
    return "identity", MIXED_PHOTOS_KEY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    parser.add_argument("--work", type=Path, default=None, help="project folder to build in (default: a temporary one)")
    parser.add_argument("--max-frames", type=int, default=1000, help="frames.max_frames (default: the asset's default)")
    parser.add_argument("--only", nargs="*", default=[], help="partition keys to build (default: all)")
    args = parser.parse_args(argv)
    if not (args.media / "videos").is_dir():
        print(f"no dev media at {args.media}: nothing to measure (pass --media)")
        return 0

    from dagster import DagsterInstance, materialize

    from facepipe.assets.curation import build_curation_asset
    from facepipe.assets.prep import build_prep_assets
    from facepipe.assets.stage import STORE_INPUT, store_input
    from facepipe.curation import REASONS
    from facepipe.resources import FacepipeSettings

    work = args.work or Path(tempfile.mkdtemp(prefix="facepipe-curation-"))
    data = work / "data"
    settings = FacepipeSettings(data_root=str(data), store_root=str(work / "store"), store_cache=str(work / "cache"),
                                models_root=str(work / "models"))
    instance = DagsterInstance.ephemeral()
    run_config = {"ops": {f"{role}__frames": {"config": {"max_frames": args.max_frames}} for role in ("identity", "target")},
                  "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    rows = []
    for role, key in partitions(args.media, data):
        if args.only and key not in args.only:
            continue
        instance.add_dynamic_partitions(role, [key])
        assets = [*build_prep_assets(role), build_curation_asset(role)]
        config = {**run_config, "ops": {op: value for op, value in run_config["ops"].items() if op.startswith(role)}}
        result = materialize(assets, instance=instance, partition_key=key, run_config=config,
                             resources={"settings": settings, STORE_INPUT: store_input}, raise_on_error=False)
        if not result.success:
            print(f"{role} {key}: FAILED (see the run log above)", file=sys.stderr)
            continue
        meta = {k: v.value for k, v in result.asset_materializations_for_node(f"{role}__curated_faces")[0].metadata.items()}
        artifact = settings.store.current(f"{role}/curated_faces", key)
        sheet = artifact.path / "dropped.png"
        rows.append((role, key, meta["faces_in"], meta["faces_kept"], meta["dropped_by_reason"],
                     str(sheet) if sheet.is_file() else "-"))
        print(f"{role} {key}: kept {meta['faces_kept']} of {meta['faces_in']}", flush=True)

    print(f"\nmax_frames {args.max_frames}; project {work}\n")
    print("| role | partition | faces | kept | " + " | ".join(REASONS) + " | dropped sheet |")
    print("|---|---|---|---|" + "---|" * len(REASONS) + "---|")
    for role, key, count, kept, dropped, sheet in rows:
        print(f"| {role} | {key} | {count} | {kept} | " + " | ".join(str(dropped[r]) for r in REASONS) + f" | {sheet} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
