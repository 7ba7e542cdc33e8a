"""identity_profile materialized in-process on tiny generated clips, with the real dlib embedder."""

import json
import shutil

import cv2
import pytest

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
    result = project.materialize("identity", key, assets=project.identity_assets)
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
