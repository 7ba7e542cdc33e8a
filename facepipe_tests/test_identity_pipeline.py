"""identity_profile materialized in-process on tiny generated clips, with the real dlib embedder."""

import json
import logging
import shutil

import cv2
import pytest

from facepipe.assets.identity import few_faces_warning
from facepipe.sample import astronaut_face, hopper_face, render_head_video
from facepipe.store import ArtifactStore


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    render_head_video(hopper_face(160), folder / "hopper.mp4", n_frames=10, size=160)
    cv2.imwrite(str(folder / "stranger.png"), astronaut_face(160))
    return folder


def build(project, clips, key, with_stranger=False):
    folder = project.folder("identity", key)
    shutil.copy(clips / "hopper.mp4", folder / "hopper.mp4")
    if with_stranger:
        shutil.copy(clips / "stranger.png", folder / "stranger.png")
        # curation drops the stranger (facepipe_tests/test_curation.py); a user who insists on
        # keeping it still gets a profile that rejects it as an outlier
        (folder / "curation.toml").write_text('keep = ["stranger"]\n')
    result = project.materialize("identity", key, assets=project.profile_assets)
    artifact = ArtifactStore(project.store).current("identity/identity_profile", key)
    return result, json.loads((artifact.path / "profile.json").read_text()), artifact


def test_profile_rejects_a_stranger_and_is_published(project, clips):
    result, profile, _ = build(project, clips, "hopper", with_stranger=True)
    stats = profile["quality_stats"]
    assert profile["embedder"] == "dlib" and profile["embedding_dim"] == 128 and len(profile["embedding_mean"]) == 128
    assert stats["faces_embedded"] == 11 and stats["outliers_rejected"] == 1
    assert stats["outlier_faces"] == ["stranger.png#0"]
    assert profile["num_frames"] == 10
    assert sum(v * v for v in profile["embedding_mean"]) == pytest.approx(1.0, abs=1e-4)
    published = project.models / "identities" / "hopper.json"
    assert json.loads(published.read_text()) == profile
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 1 and checks[0].passed


def test_two_cold_builds_give_identical_profile_bytes(tmp_path, clips):
    from conftest import Project

    first, second = Project(tmp_path / "a"), Project(tmp_path / "b")
    _, _, a = build(first, clips, "hopper")
    _, _, b = build(second, clips, "hopper")
    assert (a.path / "profile.json").read_bytes() == (b.path / "profile.json").read_bytes()
    assert (a.path / "embeddings.parquet").read_bytes() == (b.path / "embeddings.parquet").read_bytes()


TINY_MODEL = {"epochs": 20, "batch_size": 4, "resolution": 32, "width": 8, "latent_dim": 32, "depth": 3,
              "holdout_every": 4, "cpu_threads": 1, "lr": 2e-3, "samples_per_epoch": 0}


def build_model(project, clips, key="hopper", raise_on_error=True, **overrides):
    folder = project.folder("identity", key)
    shutil.copy(clips / "hopper.mp4", folder / "hopper.mp4")
    config = {"ops": {"identity__identity_model": {"config": {**TINY_MODEL, **overrides}}}}
    result = project.materialize("identity", key, run_config=config, assets=project.identity_assets,
                                 raise_on_error=raise_on_error)
    artifact = ArtifactStore(project.store).current("identity/identity_model", key)
    return result, artifact


def test_identity_model_learns_exports_and_resumes(project, clips):
    import onnxruntime as ort
    import zlib

    result, artifact = build_model(project, clips)
    meta = artifact.metadata
    assert meta["final"]["holdout_l1"] < 0.8 * meta["initial"]["holdout_l1"]
    dfm = artifact.path / "hopper.dfm"
    assert (artifact.path / "hopper.hash").read_text() == format(zlib.crc32(dfm.read_bytes()), "08x")
    session = ort.InferenceSession(str(dfm), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["in_face:0"]
    assert [o.name for o in session.get_outputs()] == ["out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0"]
    card = json.loads((artifact.path / "hopper.json").read_text())
    assert card["lineage"]["faces"] == ArtifactStore(project.store).current("identity/curated_faces", "hopper").content_hash
    assert meta["onnx_parity_max_abs_error"] < 1e-4

    # raising epochs continues the same run from its last checkpoint
    _, longer = build_model(project, clips, epochs=22)
    assert longer.metadata["resumed_from_epoch"] == 20 and longer.metadata["epochs"] == 22
    # its training time counts all 22 epochs, the 20 of the first build included (the engine
    # keeps their history across the resume; rounded to 0.1 s, so a fast machine may tie)
    assert longer.metadata["epochs_s"] >= meta["epochs_s"] > 0
    # a changed learning rate is another run: it starts fresh
    _, other = build_model(project, clips, lr=1e-3)
    assert other.metadata["resumed_from_epoch"] == 0

    # a learning rate that wrecks the model is refused, and the last good model stays current
    failed, current = build_model(project, clips, lr=1.0, epochs=2, raise_on_error=False)
    assert not failed.success
    failure = next(event for event in failed.all_events if event.is_step_failure)
    assert "far worse than the untrained model's" in str(failure.event_specific_data.error) and "Lower lr" in str(failure.event_specific_data.error)
    assert current.fingerprint == other.fingerprint


def test_an_identity_too_small_to_hold_faces_out_still_builds_its_model(project, clips):
    # 10 faces, fewer than 2 x holdout_every: none held out (a user's handful of photos), so there is
    # no held-out error to report; the model is still built, exported and carded.
    result, artifact = build_model(project, clips, key="few", holdout_every=10, epochs=2)
    assert result.success and artifact.metadata["holdout_faces"] == 0 and artifact.metadata["train_faces"] == 10
    card = json.loads((artifact.path / "few.json").read_text())
    assert card["metrics"] == {} and card["name"] == "few"
    # and the user is told, before the training, that so few faces make a swap that cannot talk
    warnings = [e.user_message for e in project.instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any("identity 'few' has 10 face(s)" in line and "data/identities/few/" in line for line in warnings)


def test_few_faces_warning_names_the_identity_below_twenty_faces_only():
    assert "identity 'jane' has 8 face(s)" in few_faces_warning("jane", 8)
    assert few_faces_warning("jane", 19) is not None and few_faces_warning("jane", 20) is None


def test_two_cold_identity_model_builds_are_byte_identical(tmp_path, clips):
    from conftest import Project

    _, a = build_model(Project(tmp_path / "a"), clips)
    _, b = build_model(Project(tmp_path / "b"), clips)
    for name in ["model.safetensors", "hopper.dfm", "hopper.hash"]:
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes(), name
