"""Pair builds in-process: LoRA adapter, merged DFM export, registry, evaluation, sharing."""

import json
import shutil
import zlib

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import tiny_run_config

from facepipe.assets.pair import (beyond_reach_warning, chosen_mouth_follow, chosen_pose_follow,
                                 turn_checked_mouth_follow, yaw_span)
from facepipe.faces import FaceSet, resize_crops
from facepipe.models.pair import SWAP_POSE_DIRECTIONS, load_adapter
from facepipe.models.swap import INPUT_BLUR_PX, unsharp
from facepipe.registry import read_index
from facepipe.sample import astronaut_face, hopper_face, render_head_video
from facepipe.sharpening import MAX_AMOUNT
from facepipe.skin_tone import MAX_GAIN, face_means
from facepipe.store import ArtifactStore




@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair_clips")
    render_head_video(hopper_face(160), folder / "hopper.mp4", n_frames=10, size=160)
    render_head_video(astronaut_face(160), folder / "talk.mp4", n_frames=10, size=160, occluders=True)
    return folder


def prepare(project, clips, targets=("talk",)):
    shutil.copy(clips / "hopper.mp4", project.folder("identity", "hopper") / "hopper.mp4")
    project.materialize("identity", "hopper", tiny_run_config("identity__identity_model"), assets=project.identity_assets)
    for target in targets:
        shutil.copy(clips / "talk.mp4", project.folder("target", target) / "talk.mp4")
        if target != "talk":  # a recoloured copy: another target of the same identity
            path = project.folder("target", target) / "talk.mp4"
            from facepipe.media import decode_video
            from facepipe.media import write_video

            write_video(path, [f[..., ::-1].copy() for f in decode_video(path)], 25)  # channels swapped
        project.materialize("target", target, tiny_run_config("target__xseg_model"), assets=project.target_assets)


def build_pair(project, key, raise_on_error=True):
    return project.materialize("pair", key, tiny_run_config("pair__lora_adapter"), assets=project.pair_assets,
                               raise_on_error=raise_on_error)


def test_pair_before_its_inputs_fails_naming_what_to_build(project, clips):
    shutil.copy(clips / "hopper.mp4", project.folder("identity", "hopper") / "hopper.mp4")
    result = build_pair(project, "hopper|talk", raise_on_error=False)
    assert not result.success
    error = str(next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error)
    # nothing of the identity is built: the first input read names its asset, partition and the fix
    assert error.startswith("dagster._core.definitions.events.Failure: pair/lora_adapter [hopper|talk]: 'identity/")
    assert "has no output for partition 'hopper' yet: materialize" in error


def test_pair_builds_publishes_and_shares_the_identity_model(project, clips):
    prepare(project, clips, targets=("talk", "talk_bgr"))
    first = build_pair(project, "hopper|talk")
    store = ArtifactStore(project.store)
    export = store.current("pair/onnx_export", "hopper|talk")
    dfm = project.models / "trained" / "hopper_talk.dfm"
    assert dfm.read_bytes() == (export.path / "hopper_talk.dfm").read_bytes()
    assert (project.models / "trained" / "hopper_talk.hash").read_text() == format(zlib.crc32(dfm.read_bytes()), "08x")
    assert (project.models / "trained" / "talk_xseg.onnx").is_file()
    index = read_index(project.models)["models"]
    assert index["hopper_talk"]["kind"] == "swap" and index["talk_xseg"]["kind"] == "occluder"

    # the published model runs in a plain onnxruntime session with only the card's instructions
    card = json.loads((project.models / "trained" / "hopper_talk.json").read_text())
    size = card["size"]
    session = ort.InferenceSession(str(dfm), providers=["CPUExecutionProvider"])
    target_crop = FaceSet.load(store.current("target/curated_faces", "talk").path).crops[0]
    crop = cv2.resize(np.asarray(target_crop), (size, size), interpolation=cv2.INTER_AREA)
    # the card names both inputs; morph_value:0 at 1 is the full swap (FaceFusion's default)
    assert [i["name"] for i in card["inputs"]] == [i.name for i in session.get_inputs()] == ["in_face:0", "morph_value:0"]
    face_mask, celeb_face, celeb_mask = session.run(None, {"in_face:0": crop[None].astype(np.float32) / 255,
                                                           "morph_value:0": np.float32([1.0])})
    assert face_mask.shape == (1, size, size, 1) and celeb_face.shape == (1, size, size, 3)

    # the adapter records how far each side turns (what the swap can follow)
    adapter_meta = store.current("pair/lora_adapter", "hopper|talk").metadata
    for side in ("identity_yaw_deg", "target_yaw_deg"):
        assert len(adapter_meta[side]) == 2 and adapter_meta[side][0] <= adapter_meta[side][1]
    # an adapter that does not turn the identity's faces leaves the pose to the latent (pose_follow 0)
    assert adapter_meta["pose_follow"] == 0.0
    assert SWAP_POSE_DIRECTIONS not in load_adapter(store.current("pair/lora_adapter", "hopper|talk").path).tensors
    meta = export.metadata
    assert meta["onnx_parity_max_abs_error"] <= meta["parity_tolerance"]
    # the face is sharpened as far as the tiny identity model's reconstructions need, within the cap
    assert 0 < meta["identity_reconstruction_sharpness"] < 1 and 0 < meta["sharpen"] <= MAX_AMOUNT
    # and the crop it is fed is low-passed towards what the encoder learnt from
    assert meta["input_blur"] == INPUT_BLUR_PX > 0
    # the face it paints is in the target's skin tone: the swaps of the target's training faces have
    # their mean colour over the central face (the recorded per-channel gain took them there)
    gain = np.array(meta["colour_gain"])
    assert gain.shape == (3,) and np.all((1 / MAX_GAIN <= gain) & (gain <= MAX_GAIN)) and np.abs(gain - 1).max() > 0.02
    target_set = FaceSet.load(store.current("target/curated_faces", "talk").path)
    training = np.setdiff1d(np.arange(len(target_set)), np.load(store.current("pair/lora_adapter", "hopper|talk").path / "target_holdout.npy"))
    fed = resize_crops(np.asarray(target_set.crops)[training], size)
    painted = np.concatenate([session.run(None, {"in_face:0": c[None].astype(np.float32) / 255, "morph_value:0": np.float32([1.0])})[1]
                              for c in fed])
    painted = np.clip(np.rint(painted * 255), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(face_means(painted), face_means(fed), atol=4.0)
    metrics = meta["metrics"]
    assert {"identity", "swap_following", "baseline_following", "pose_following_margin_deg"} <= set(metrics)
    assert (export.path / "preview.png").is_file() and (export.path / "preview.mp4").is_file()
    # the preview video shows the original frame beside the swapped one
    frames_dir = store.current("target/frames", "talk").path / "frames"
    original = cv2.imread(str(sorted(frames_dir.iterdir())[0]))
    ok, shown = cv2.VideoCapture(str(export.path / "preview.mp4")).read()
    assert ok and abs(shown.shape[1] / shown.shape[0] - 2 * original.shape[1] / original.shape[0]) < 0.05
    assert len(first.get_asset_check_evaluations()) == 3

    adapter_fingerprint = store.current("pair/lora_adapter", "hopper|talk").fingerprint
    # a second target of the same identity: the identity model is read, not rebuilt
    model_before = store.current("identity/identity_model", "hopper").fingerprint
    second = build_pair(project, "hopper|talk_bgr")
    logs = [e.message for e in project.instance.all_logs(second.run_id) if e.message]
    assert any(f"reusing identity_model {model_before}" in line for line in logs)
    assert store.current("identity/identity_model", "hopper").fingerprint == model_before

    # re-publishing the same bytes is a no-op
    again = build_pair(project, "hopper|talk")
    logs = [e.message for e in project.instance.all_logs(again.run_id) if e.message]
    assert any("written nothing (same bytes)" in line for line in logs)

    # onnx_export.sharpen sets the amount, here as this pair's own setting in pairs.toml (over the
    # run config): at 0 the face is what the decoder paints; the matched export's face is that face
    # through the unsharp mask of the recorded amount
    (project.data / "pairs.toml").write_text('[[pair]]\nidentity = "hopper"\ntarget = "talk"\n'
                                             'onnx_export = { sharpen = 0.0 }\n')
    again = build_pair(project, "hopper|talk")
    logs = [e.message for e in project.instance.all_logs(again.run_id) if e.message]
    assert any("pair/onnx_export [hopper|talk]: pairs.toml sets sharpen=0.0 (over the run config)" in line for line in logs)
    plain = store.current("pair/onnx_export", "hopper|talk")
    assert plain.metadata["sharpen"] == 0.0 and plain.fingerprint != export.fingerprint
    assert plain.record["config"]["sharpen"] == 0.0  # recorded as what it was built with
    assert store.current("pair/lora_adapter", "hopper|talk").fingerprint == adapter_fingerprint  # nothing before it
    plain_face = ort.InferenceSession(str(plain.path / "hopper_talk.dfm"), providers=["CPUExecutionProvider"]).run(
        None, {"in_face:0": crop[None].astype(np.float32) / 255, "morph_value:0": np.float32([1.0])})[1]
    resharpened = unsharp(torch.from_numpy(plain_face).permute(0, 3, 1, 2), meta["sharpen"]).permute(0, 2, 3, 1)
    np.testing.assert_allclose(celeb_face, resharpened.numpy(), atol=1e-5)
    assert np.abs(celeb_face - plain_face).max() > 5e-5  # the tiny model's face is nearly flat: little to sharpen

    # an adapter that turns the identity's faces hands the target's pose over where those turned faces
    # reach the target's turns: the pose reader and directions are saved with it and in the export
    (project.data / "pairs.toml").write_text('[[pair]]\nidentity = "hopper"\ntarget = "talk"\n'
                                             'lora_adapter = { turn = 0.5 }\n')
    build_pair(project, "hopper|talk")
    turned = store.current("pair/lora_adapter", "hopper|talk")
    # the turned copies widen hopper's reach (-38..38 deg) beyond the sample target's turns (-19..19)
    assert beyond_reach_warning("hopper", "talk", turned.metadata["identity_yaw_deg"], turned.metadata["target_yaw_deg"]) is None
    assert turned.metadata["pose_follow"] == 1.0 and turned.metadata["pose_reading"] == "crop"
    saved = load_adapter(turned.path)
    assert saved.adapter_config.pose_follow == 1.0 and SWAP_POSE_DIRECTIONS in saved.tensors
    followed = store.current("pair/onnx_export", "hopper|talk").metadata
    assert followed["onnx_parity_max_abs_error"] <= followed["parity_tolerance"]


def test_a_target_turning_beyond_the_identitys_faces_is_told_how_to_follow_it():
    assert yaw_span(np.column_stack([np.arange(101.0), np.zeros(101)])) == (5.0, 95.0)
    # german_news's faces (-4.2..7 deg) against obama's (2.5..21.6): the swap cannot follow
    line = beyond_reach_warning("german_news", "obama", (-4.2, 7.0), (2.5, 21.6))
    assert line.startswith("'obama' turns 2..22 deg") and "-4..7 deg" in line
    # it says where this identity's and this pair's turns are set
    assert "turn = 0.5 in data/identities/german_news/settings.toml" in line and "lora_adapter = { turn = 0.5 }" in line
    assert beyond_reach_warning("kim", "mead", (-11.3, 11.3), (-12.5, -5.4)) is None  # kim mirrored covers mead
    assert beyond_reach_warning("jane", "left", (-5.0, 5.0), (-12.0, 0.0)) is not None  # either side


def test_the_swap_follows_the_targets_pose_by_default_where_the_adapter_turns_the_identitys_faces():
    # german_news (turned) -> obama: yaw r 0.61 -> 0.81, the pose read off the crop
    assert chosen_pose_follow(None, None, turned=True, within_reach=True)[:2] == (1.0, "crop")
    # obama_early (turned) -> vox, who turns further still: off the crop 0.71 -> 0.43 (the CNN misreads
    # vox's later frames), so the yaw is read off the target path's mask
    follow, reading, why = chosen_pose_follow(None, None, turned=True, within_reach=False)
    assert (follow, reading) == (1.0, "mask") and "beyond even the identity's turned faces" in why
    # kim -> mead: kim's own faces cover mead's turns; nothing to gain
    assert chosen_pose_follow(None, None, turned=False, within_reach=True)[0] == 0.0
    # a pair's own settings win either way
    assert chosen_pose_follow(0.0, None, turned=True, within_reach=True) == (0.0, "crop", "the pair's setting")
    assert chosen_pose_follow(0.5, "crop", turned=False, within_reach=False) == (0.5, "crop", "the pair's setting")
    follow, reading, why = chosen_pose_follow(None, "crop", turned=True, within_reach=False)
    assert (follow, reading) == (1.0, "crop") and "mask" not in why  # the log names the reading it uses only


def test_the_swaps_mouth_follows_only_where_both_sides_open_it():
    talking = np.linspace(0.001, 0.04, 50)  # german_news's talking head
    assert chosen_mouth_follow(1.0, talking, talking)[0] == 1.0
    assert chosen_mouth_follow(0.5, talking, talking)[0] == 0.5
    still = np.linspace(0.0002, 0.003, 50)  # the sample's animated photo of Hopper: no direction of the opening to follow
    mouth, why = chosen_mouth_follow(1.0, still, talking)
    assert mouth == 0.0 and "the identity's faces hardly open the mouth" in why
    shut = np.linspace(0.0, 0.003, 50)  # vox keeps his mouth shut: nothing to read but noise
    mouth, why = chosen_mouth_follow(1.0, talking, shut)
    assert mouth == 0.0 and "the target's faces hardly open the mouth" in why
    assert chosen_mouth_follow(0.0, talking, talking)[0] == 0.0


def test_the_swaps_mouth_does_not_follow_where_its_step_turns_the_swap():
    obama = np.column_stack([np.linspace(2.5, 21.6, 50), np.linspace(-7.7, 6.1, 50)])  # yaw, pitch (degrees)
    mead = np.column_stack([np.linspace(-12.5, -5.4, 50), np.linspace(-5.4, 1.4, 50)])
    mouth, share, why = turn_checked_mouth_follow(1.0, np.array([1.0, 2.0, 0.05]), obama, "the mouth opens")
    assert mouth == 1.0 and share == pytest.approx(2.0 / (0.9 * 13.8)) and why.startswith("the mouth opens; ")
    mouth, share, why = turn_checked_mouth_follow(1.0, np.array([-8.0, 2.0, 0.08]), mead, "the mouth opens")
    assert mouth == 0.0 and share == pytest.approx(8.0 / (0.9 * 7.1)) and "turn as the mouth moves" in why
    # a turn the same size is half the range of a target that turns twice as far
    assert turn_checked_mouth_follow(0.5, np.array([0.5 * 0.9 * 7.1, 0.0, 0.08]), mead, "")[0] == 0.5
    mouth, share, why = turn_checked_mouth_follow(1.0, np.full(3, np.nan), mead, "")  # FaceMesh read no swap
    assert mouth == 1.0 and np.isnan(share) and "not known" in why
