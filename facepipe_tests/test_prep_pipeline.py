"""In-process materializations of the data-preparation chain on a tiny generated clip."""

import shutil

import cv2
import numpy as np
import pytest

from facepipe.faces import FaceSet
from facepipe.landmarks import LandmarkResult
from facepipe.sample import hopper_face, render_head_video
from facepipe.store import ArtifactStore

STAGES = ["media", "frames", "landmarks", "smoothed_landmarks", "faces"]


def materialized(result, role="identity"):
    """{stage: metadata} of a materialize() result."""
    found = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        found[mat.asset_key.path[-1]] = {k: v.value for k, v in mat.metadata.items()}
    return found


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    render_head_video(hopper_face(160), folder / "clip.mp4", n_frames=12, size=160)
    cv2.imwrite(str(folder / "still.png"), hopper_face(160))
    return folder


def add_clip(project, tiny_clip, key="tiny"):
    folder = project.folder("identity", key)
    for f in tiny_clip.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def test_chain_builds_then_repeats_as_cache_hits(project, tiny_clip):
    add_clip(project, tiny_clip)
    first = materialized(project.materialize("identity", "tiny"))
    assert set(first) == set(STAGES) and all(m["cache"] == "built" for m in first.values())
    assert first["frames"]["frames"] == 13
    assert first["landmarks"]["detected"] >= 12

    store = ArtifactStore(project.store)
    marks = LandmarkResult.load(store.current("identity/landmarks", "tiny").path)
    assert marks.points.shape == (13, 478, 3)
    faces = FaceSet.load(store.current("identity/faces", "tiny").path)
    assert faces.crops.shape[1:] == (256, 256, 3) and faces.masks.shape[1:] == (256, 256)
    assert len(faces) == first["landmarks"]["detected"]
    # aligned: the eyes sit where the dfl_whole_face template puts them
    eyes = np.asarray(faces.landmarks)[:, [468, 473]].mean(axis=0)
    assert np.allclose(eyes, [[0.353 * 256, 0.393 * 256], [0.628 * 256, 0.393 * 256]], atol=12)

    second = project.materialize("identity", "tiny")
    again = materialized(second)
    assert all(m["cache"] == "hit" for m in again.values())
    assert {k: m["content_hash"] for k, m in again.items()} == {k: m["content_hash"] for k, m in first.items()}
    logs = [e.message for e in project.instance.all_logs(second.run_id) if e.message]
    assert any("cache hit" in line and "identity/landmarks" in line for line in logs)


def test_config_change_recomputes_from_that_stage_only(project, tiny_clip):
    add_clip(project, tiny_clip)
    project.materialize("identity", "tiny")
    changed = materialized(project.materialize("identity", "tiny", {"ops": {"identity__frames": {"config": {"max_frames": 6}}}}))
    assert changed["media"]["cache"] == "hit"
    assert changed["frames"]["cache"] == "built" and changed["frames"]["frames"] == 6
    assert changed["faces"]["cache"] == "built"


def test_changed_media_file_recomputes_the_chain(project, tiny_clip):
    folder = add_clip(project, tiny_clip)
    before = materialized(project.materialize("identity", "tiny"))
    cv2.imwrite(str(folder / "still.png"), cv2.flip(cv2.imread(str(folder / "still.png")), 1))
    after = materialized(project.materialize("identity", "tiny"))
    assert all(after[s]["cache"] == "built" for s in STAGES)
    assert after["media"]["content_hash"] != before["media"]["content_hash"]


def test_failed_run_keeps_previous_good_output(project, tiny_clip):
    folder = add_clip(project, tiny_clip)
    good = materialized(project.materialize("identity", "tiny"))
    for f in folder.iterdir():
        f.unlink()
    (folder / "broken.mp4").write_bytes(b"\x00" * 300)
    result = project.materialize("identity", "tiny", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "broken.mp4" in str(failure.event_specific_data.error)
    store = ArtifactStore(project.store)
    for stage in STAGES:
        assert store.current(f"identity/{stage}", "tiny").content_hash == good[stage]["content_hash"]


def test_empty_folder_fails_with_what_to_do(project):
    project.folder("identity", "nobody")
    result = project.materialize("identity", "nobody", raise_on_error=False)
    assert not result.success
    error = str(next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error)
    assert "no usable media" in error and "nobody" in error and "Add videos" in error


def test_images_without_faces_fail_clearly(project):
    folder = project.folder("identity", "walls")
    cv2.imwrite(str(folder / "wall.png"), np.full((120, 120, 3), 128, np.uint8))
    result = project.materialize("identity", "walls", raise_on_error=False)
    error = str(next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error)
    assert "no face found" in error


def test_bad_files_are_skipped_and_counted(project, tiny_clip):
    folder = add_clip(project, tiny_clip)
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "readme.txt").write_text("hi")
    (folder / "corrupt.mov").write_bytes(b"\x00" * 500)
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((10, 10, 3), np.uint8))
    cv2.imwrite(str(folder / "blank ünï.png"), np.full((100, 100, 3), 200, np.uint8))  # no face
    meta = materialized(project.materialize("identity", "tiny"))
    skipped = {s.split(":")[0]: s for s in meta["media"]["skipped"]}
    assert sorted(skipped) == ["corrupt.mov", "readme.txt", "tiny.png", "zero.mp4"]
    assert "cannot decode" in skipped["corrupt.mov"] and "too small" in skipped["tiny.png"]
    assert meta["media"]["files"] == 3 and meta["frames"]["sources"] == 3
    assert meta["landmarks"]["no_face_frames"] == {"blank ünï.png": 1}
