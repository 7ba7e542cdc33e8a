"""The sample builder: deterministic bytes, faces FaceMesh finds, real head motion, true occluder masks."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np
import pytest

from facepipe.sample import (
    SAMPLE_FPS,
    SAMPLE_FRAME_SIZE,
    HeadPose,
    Lighting,
    OccluderPlacement,
    astronaut_face,
    astronaut_image,
    build_sample,
    hopper_face,
    hopper_image,
    load_occluder_masks,
    make_sprites,
    render_frame,
    render_head_video,
)
from facepipe.sample.files import write_bytes
from facepipe.sample.lighting import lighting_changes

LEFT_IRIS, RIGHT_IRIS, NOSE_TIP = 468, 473, 1


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[dict, Path, Path, float]:
    """The full sample built twice into separate folders (once per module: it takes seconds)."""
    first, second = tmp_path_factory.mktemp("sample_a"), tmp_path_factory.mktemp("sample_b")
    started = time.perf_counter()
    summary = build_sample(first)
    seconds = time.perf_counter() - started
    build_sample(second)
    return summary, first, second, seconds


@pytest.fixture(scope="module")
def face_mesh():
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5
    ) as mesh:
        yield mesh


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"cannot open {path}"
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


def landmarks(mesh, frame_bgr: np.ndarray) -> np.ndarray | None:
    """[478, 2] pixel landmarks of the face FaceMesh finds, or None."""
    result = mesh.process(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
    if not result.multi_face_landmarks:
        return None
    height, width = frame_bgr.shape[:2]
    return np.array([(p.x * width, p.y * height) for p in result.multi_face_landmarks[0].landmark])


def nose_offset(points: np.ndarray) -> float:
    """Horizontal offset of the nose tip from the eye midpoint, in eye distances (a yaw proxy)."""
    midpoint = (points[LEFT_IRIS] + points[RIGHT_IRIS]) / 2
    return float((points[NOSE_TIP, 0] - midpoint[0]) / np.linalg.norm(points[RIGHT_IRIS] - points[LEFT_IRIS]))


def hull_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    return mask


@pytest.fixture(scope="module")
def video_landmarks(two_builds, face_mesh) -> dict[str, list[np.ndarray | None]]:
    summary = two_builds[0]
    found = {}
    for role in ("identity", "target"):
        folder = Path(summary[role]["folder"])
        for name in sorted(summary[role]["frames"]):
            if name.endswith(".mp4"):
                frames, _ = read_video(folder / name)
                found[name] = [landmarks(face_mesh, frame) for frame in frames]
    return found


def relative_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_source_photos_are_the_public_domain_portraits():
    assert hopper_image().shape == (600, 512, 3) and hopper_image().dtype == np.uint8
    assert astronaut_image().shape == (512, 512, 3) and astronaut_image().dtype == np.uint8
    assert hopper_face().shape == astronaut_face().shape == (SAMPLE_FRAME_SIZE, SAMPLE_FRAME_SIZE, 3)


def test_two_builds_write_identical_bytes(two_builds):
    summary, first, second, seconds = two_builds
    print(f"full sample build: {seconds:.1f} s")
    files = relative_files(first)
    assert files == relative_files(second)
    masks = [f for f in files if f.startswith("targets/astronaut/masks/")]
    assert masks == sorted(f"targets/astronaut/masks/{name}" for name in summary["user_masks"]) and len(masks) >= 10
    assert [f for f in files if f not in masks] == [
        "identities/hopper/hopper_left.jpg",
        "identities/hopper/hopper_turn.mp4",
        "identities/hopper/hopper_up.png",
        "sample_truth/astronaut/occluders.npz",
        "targets/astronaut/astronaut_mic.jpg",
        "targets/astronaut/astronaut_side.png",
        "targets/astronaut/astronaut_talk.mp4",
    ], "unexpected layout (or a temporary file was left behind)"
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs between builds"
    assert sorted(summary["changed"]) == sorted(name for name in files)


def test_videos_have_the_announced_frames_and_rate(two_builds):
    summary = two_builds[0]
    expected = {"hopper_turn.mp4": 75, "astronaut_talk.mp4": 100}
    for role in ("identity", "target"):
        folder = Path(summary[role]["folder"])
        for name, count in summary[role]["frames"].items():
            if name.endswith(".mp4"):
                frames, fps = read_video(folder / name)
                assert len(frames) == count == expected[name]
                assert fps == pytest.approx(SAMPLE_FPS)
                assert frames[0].shape == (SAMPLE_FRAME_SIZE, SAMPLE_FRAME_SIZE, 3)
            else:
                assert count == 1
                assert cv2.imread(str(folder / name)).shape == (SAMPLE_FRAME_SIZE, SAMPLE_FRAME_SIZE, 3)


def test_unchanged_files_are_not_rewritten(tmp_path):
    path = tmp_path / "still.png"
    assert write_bytes(path, b"first") is True
    stamp = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert write_bytes(path, b"first") is False
    assert path.stat().st_mtime_ns == stamp
    assert write_bytes(path, b"second") is True and path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["still.png"], "temporary file left behind"


def test_facemesh_finds_the_face_in_almost_every_frame(video_landmarks, two_builds, face_mesh):
    for name, found in video_landmarks.items():
        rate = np.mean([points is not None for points in found])
        assert rate >= 0.9, f"FaceMesh found a face in only {rate:.0%} of {name}"
    summary = two_builds[0]
    for role in ("identity", "target"):
        folder = Path(summary[role]["folder"])
        for name in summary[role]["frames"]:
            if not name.endswith(".mp4"):
                assert landmarks(face_mesh, cv2.imread(str(folder / name))) is not None, f"no face in {name}"


def test_head_pose_varies_far_more_than_on_a_static_clip(video_landmarks, face_mesh):
    face = hopper_face()
    # A static head under the same kind of lighting drift: the landmark noise floor.
    static = [landmarks(face_mesh, render_frame(face, HeadPose(), light)[0]) for light in lighting_changes(10, seed=0)]
    static_offsets = [nose_offset(points) for points in static]
    static_range = max(static_offsets) - min(static_offsets)
    for name, found in video_landmarks.items():
        offsets = [nose_offset(points) for points in found if points is not None]
        moving_range = max(offsets) - min(offsets)
        assert moving_range > 0.12, f"{name}: nose offset only spans {moving_range:.3f} eye distances"
        assert moving_range > 4 * static_range, f"{name}: {moving_range:.3f} vs static {static_range:.3f}"


def test_occluder_masks_cover_part_of_the_face(two_builds, video_landmarks):
    summary = two_builds[0]
    masks = load_occluder_masks(summary["occluder_masks"])
    assert sorted(masks) == sorted(summary["target"]["frames"])
    for name, count in summary["target"]["frames"].items():
        assert masks[name].shape == (count, SAMPLE_FRAME_SIZE, SAMPLE_FRAME_SIZE)
        assert masks[name].dtype == np.uint8 and set(np.unique(masks[name])) <= {0, 1}
    assert masks["astronaut_mic.jpg"].any() and not masks["astronaut_side.png"].any()

    video = masks["astronaut_talk.mp4"]
    occluded = video.reshape(len(video), -1).any(axis=1)
    assert 0.4 <= occluded.mean() <= 0.9, f"occluders in {occluded.mean():.0%} of frames"
    coverages = []
    for mask, points in zip(video, video_landmarks["astronaut_talk.mp4"]):
        if points is not None:
            face = hull_mask(points, mask.shape)
            coverages.append(np.count_nonzero(face & mask) / np.count_nonzero(face))
    coverages = np.array(coverages)
    assert coverages.max() <= 0.35, f"an occluder hides {coverages.max():.0%} of the face"
    assert np.mean(coverages >= 0.05) >= 0.25, "occluders rarely overlap the face"


def test_mask_is_exactly_where_the_occluder_was_drawn():
    face = astronaut_face()
    pose, light = HeadPose(yaw_deg=8, pitch_deg=-4), Lighting(gain=1.05)
    sprites = make_sprites(SAMPLE_FRAME_SIZE, seed=3)
    clean, no_mask = render_frame(face, pose, light)
    assert not no_mask.any()
    for placement in (OccluderPlacement("hand", -0.1, 0.2, 10), OccluderPlacement("microphone", 0.1, 0.2, -5)):
        covered, mask = render_frame(face, pose, light, placement, sprites)
        changed = (covered != clean).any(axis=2)
        assert mask.any()
        assert not changed[mask == 0].any(), "pixels changed outside the mask"
        # Inside, the occluder is textured and shaded, not a flat paste of one colour.
        assert changed[mask == 1].mean() > 0.95
        assert covered[mask == 1].std(axis=0).max() > 10


def test_render_head_video_makes_a_cheap_short_clip(tmp_path):
    path = tmp_path / "clip.mp4"
    started = time.perf_counter()
    masks = render_head_video(hopper_face(256), path, n_frames=10, size=256, occluders=True, seed=5)
    seconds = time.perf_counter() - started
    frames, fps = read_video(path)
    assert len(frames) == 10 and frames[0].shape == (256, 256, 3) and fps == pytest.approx(SAMPLE_FPS)
    assert masks.shape == (10, 256, 256) and masks.dtype == np.uint8
    occluded = masks.reshape(10, -1).any(axis=1)
    assert 0 < occluded.sum() < 10, "a short clip should have occluded and clear frames"
    assert seconds < 10, f"10 frames took {seconds:.1f} s"
    stamp = path.stat().st_mtime_ns
    render_head_video(hopper_face(256), path, n_frames=10, size=256, occluders=True, seed=5)
    assert path.stat().st_mtime_ns == stamp, "identical clip was rewritten"
    assert not render_head_video(hopper_face(256), tmp_path / "plain.mp4", n_frames=8, size=256).any()


def test_render_head_video_refuses_an_uncropped_photo(tmp_path):
    with pytest.raises(ValueError, match="hopper_face"):
        render_head_video(hopper_image(), tmp_path / "bad.mp4", n_frames=8)


def test_user_masks_cut_the_occluder_out_of_the_face(two_builds):
    summary, first, _, _ = two_builds
    occluders = load_occluder_masks(first / "sample_truth" / "astronaut" / "occluders.npz")["astronaut_talk.mp4"]
    for name in summary["user_masks"][:5]:
        mask = cv2.imread(str(first / "targets" / "astronaut" / "masks" / name), cv2.IMREAD_GRAYSCALE)
        occluder = occluders[int(name.rsplit("_", 1)[1].split(".")[0])] > 0
        assert occluder.any() and not mask[occluder].any()  # what covers the face is not face
        assert (mask > 0).sum() > 2000  # and the rest of the face is
