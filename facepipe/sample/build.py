"""The sample itself: which clips and stills with which poses, lights and occluders; build_sample
and its command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from facepipe.media import write_video
from facepipe.sample.faces import SAMPLE_FRAME_SIZE, astronaut_face, hopper_face
from facepipe.sample.files import encode_image, npz_bytes, write_bytes, write_user_masks
from facepipe.sample.head import HeadPose
from facepipe.sample.lighting import Lighting
from facepipe.sample.occluders import OccluderPlacement, make_sprites
from facepipe.sample.render import SAMPLE_FPS, render_frame, render_head_frames

IDENTITY_KEY = "hopper"
TARGET_KEY = "astronaut"
IDENTITY_VIDEO_FRAMES = 75  # 3 s at 25 fps
TARGET_VIDEO_FRAMES = 100  # 4 s at 25 fps


IDENTITY_STILLS = {
    "hopper_left.jpg": (
        HeadPose(yaw_deg=-20, pitch_deg=5, roll_deg=4, scale=1.02),
        Lighting(gain=1.05, gamma=0.9, gradient=0.2, gradient_angle_deg=180, tint_bgr=(0.6, 1.0, 1.4)),
    ),
    "hopper_up.png": (
        HeadPose(yaw_deg=12, pitch_deg=-12, roll_deg=-5, shift_x=0.02),
        Lighting(gain=0.9, gamma=1.15, gradient=0.18, gradient_angle_deg=30, tint_bgr=(1.4, 1.0, 0.6)),
    ),
}
TARGET_STILLS = {
    "astronaut_mic.jpg": (
        HeadPose(yaw_deg=10, pitch_deg=4, roll_deg=-3),
        Lighting(gain=1.0, gamma=1.05, gradient=0.15, gradient_angle_deg=90, tint_bgr=(0.8, 1.0, 1.2)),
        OccluderPlacement("microphone", 0.08, 0.27, -8),
    ),
    "astronaut_side.png": (
        HeadPose(yaw_deg=-22, pitch_deg=-6, roll_deg=5, shift_x=-0.02),
        Lighting(gain=1.1, gamma=0.92, gradient=0.22, gradient_angle_deg=300, tint_bgr=(1.3, 1.0, 0.7)),
        None,
    ),
}
IDENTITY_SEED, TARGET_SEED = 0, 1


def build_sample(data_root: Path | str) -> dict:
    """Write the sample identity (hopper), target (astronaut) and the target's occluder masks.

    Returns what is there: per partition its folder and the frame count of each file, the mask
    file, and `changed`: the files this call actually (re)wrote, relative to `data_root`
    (empty when the sample was already up to date).
    """
    root = Path(data_root)
    size = SAMPLE_FRAME_SIZE
    identity_dir = root / "identities" / IDENTITY_KEY
    target_dir = root / "targets" / TARGET_KEY
    masks_path = root / "sample_truth" / TARGET_KEY / "occluders.npz"
    changed: list[Path] = []

    def record(path: Path, was_written: bool) -> None:
        if was_written:
            changed.append(path)

    hopper = hopper_face(size)
    identity_frames = {}
    video = identity_dir / f"{IDENTITY_KEY}_turn.mp4"
    frames, _ = render_head_frames(hopper, IDENTITY_VIDEO_FRAMES, size, occluders=False, seed=IDENTITY_SEED)
    record(video, write_video(video, frames, SAMPLE_FPS))
    identity_frames[video.name] = len(frames)
    for name, (pose, light) in sorted(IDENTITY_STILLS.items()):
        still, _ = render_frame(hopper, pose, light)
        record(identity_dir / name, write_bytes(identity_dir / name, encode_image(identity_dir / name, still)))
        identity_frames[name] = 1

    astronaut = astronaut_face(size)
    target_frames, target_masks = {}, {}
    video = target_dir / f"{TARGET_KEY}_talk.mp4"
    frames, masks = render_head_frames(astronaut, TARGET_VIDEO_FRAMES, size, occluders=True, seed=TARGET_SEED)
    record(video, write_video(video, frames, SAMPLE_FPS))
    target_frames[video.name], target_masks[video.name] = len(frames), masks
    sprites = make_sprites(size, TARGET_SEED)
    for name, (pose, light, placement) in sorted(TARGET_STILLS.items()):
        still, mask = render_frame(astronaut, pose, light, placement, sprites)
        record(target_dir / name, write_bytes(target_dir / name, encode_image(target_dir / name, still)))
        target_frames[name], target_masks[name] = 1, mask[None]
    record(masks_path, write_bytes(masks_path, npz_bytes(target_masks)))
    labelled = write_user_masks(target_dir / "masks", video, frames, masks, record)

    return {
        "identity": {"key": IDENTITY_KEY, "folder": str(identity_dir), "frames": identity_frames},
        "target": {"key": TARGET_KEY, "folder": str(target_dir), "frames": target_frames},
        "occluder_masks": str(masks_path),
        "user_masks": labelled,
        "frame_size": size,
        "fps": SAMPLE_FPS,
        "changed": [str(path.relative_to(root)) for path in changed],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build facepipe's sample identity and target media.")
    parser.add_argument(
        "data_root", type=Path, nargs="?", default=Path("data"), help="folder holding identities/ and targets/"
    )
    summary = build_sample(parser.parse_args(argv).data_root)
    print(f"identity {summary['identity']['folder']}: {summary['identity']['frames']}")
    print(f"target   {summary['target']['folder']}: {summary['target']['frames']}")
    print(f"occluder masks {summary['occluder_masks']}; rewritten: {summary['changed'] or 'nothing'}")
