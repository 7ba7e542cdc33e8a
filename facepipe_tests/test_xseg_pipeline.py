"""xseg_model and target_masks materialized in-process on a tiny occluded clip."""

import json
import shutil
import zlib

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from facepipe.faces import FaceSet
from facepipe.sample import astronaut_face, render_head_video
from facepipe.store import ArtifactStore

TINY_XSEG = {"epochs": 3, "batch_size": 4, "width": 4, "depth": 4, "resolution": 64, "holdout_every": 4,
             "samples_per_epoch": 0, "cpu_threads": 1}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("target_clip")
    render_head_video(astronaut_face(160), folder / "talk.mp4", n_frames=12, size=160, occluders=True)
    return folder


def build(project, clip, key="talk"):
    folder = project.folder("target", key)
    if not (folder / "talk.mp4").exists():
        shutil.copy(clip / "talk.mp4", folder / "talk.mp4")
    config = {"ops": {"target__xseg_model": {"config": TINY_XSEG}}}
    result = project.materialize("target", key, run_config=config, assets=project.target_assets)
    stages = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        stages[mat.asset_key.path[-1]] = mat.metadata["cache"].value
    return result, stages


def test_xseg_trains_exports_and_masks_every_face(project, clip):
    result, stages = build(project, clip)
    assert stages["xseg_model"] == "built" and stages["target_masks"] == "built"
    store = ArtifactStore(project.store)
    xseg = store.current("target/xseg_model", "talk")
    onnx_path = xseg.path / "xseg.onnx"
    assert (xseg.path / "xseg.hash").read_text() == format(zlib.crc32(onnx_path.read_bytes()), "08x")
    card = json.loads((xseg.path / "xseg.json").read_text())
    assert card["parity"]["max_abs_error"] <= card["parity"]["tolerance"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    faces = FaceSet.load(store.current("target/curated_faces", "talk").path)
    out = session.run(None, {"input": faces.crops[:1].astype(np.float32) / 255})[0]
    assert out.shape == (1, 256, 256, 1) and 0 <= out.min() and out.max() <= 1
    masks = np.load(store.current("target/target_masks", "talk").path / "masks.npy")
    assert masks.shape == (len(faces), 256, 256) and masks.dtype == np.uint8
    assert np.abs(masks[0].astype(int) - np.round(out[0, ..., 0] * 255)).max() <= 1  # the masks are the ONNX model's
    assert "holdout_iou_clean" in xseg.metadata and "holdout_iou_occluded" in xseg.metadata
    assert len(result.get_asset_check_evaluations()) == 1


def test_user_mask_retrains_only_xseg_and_masks(project, clip):
    build(project, clip)
    _, again = build(project, clip)
    assert set(again.values()) == {"hit"}
    store = ArtifactStore(project.store)
    faces = FaceSet.load(store.current("target/curated_faces", "talk").path)
    frame = int(faces.index.source_frame_index.iat[0])
    masks_dir = project.folder("target", "talk") / "masks"
    masks_dir.mkdir()
    user_mask = np.zeros((160, 160), np.uint8)
    cv2.circle(user_mask, (80, 80), 40, 255, -1)
    cv2.imwrite(str(masks_dir / f"talk_{frame:06d}.png"), user_mask)
    result, after = build(project, clip)
    assert {k: v for k, v in after.items() if k not in ("xseg_model", "target_masks")} == \
        {"media": "hit", "frames": "hit", "landmarks": "hit", "smoothed_landmarks": "hit", "faces": "hit",
         "curated_faces": "hit"}
    assert after["xseg_model"] == "built" and after["target_masks"] == "built"
    labels = store.current("target/xseg_model", "talk").metadata["user_labels"]
    assert labels["user_labelled_faces"] == 1


def test_bad_user_mask_names_the_file(project, clip):
    build(project, clip)
    masks_dir = project.folder("target", "talk") / "masks"
    masks_dir.mkdir()
    cv2.imwrite(str(masks_dir / "nonexistent_frame.png"), np.zeros((160, 160), np.uint8))
    folder = project.folder("target", "talk")
    config = {"ops": {"target__xseg_model": {"config": TINY_XSEG}}}
    result = project.materialize("target", "talk", run_config=config, assets=project.target_assets, raise_on_error=False)
    assert not result.success
    error = str(next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error)
    assert "nonexistent_frame.png" in error
    assert folder.exists()
