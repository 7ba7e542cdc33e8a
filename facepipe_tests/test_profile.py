"""Identity profiles from real dlib embeddings of aligned sample faces."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from test_embed import CROP_SIZE, aligned_sample_faces, dlib_sample_embeddings

from facepipe.embed import DlibEmbedder
from facepipe.profile import (
    build_profile,
    crop_sharpness,
    distance_to_profile,
    landmark_variance,
    pose_proxies,
    profile_centre,
    profile_json_bytes,
    reject_outliers,
    round_floats,
)

REQUIRED_KEYS = {
    "id",
    "name",
    "embedding_mean",
    "embedding_std",
    "num_frames",
    "quality_stats",
    "embedder",
    "embedding_dim",
    "embedder_model_hash",
}
REQUIRED_QUALITY = {
    "avg_face_score",
    "mean_detection_score",
    "mean_laplacian_variance",
    "pose_spread_yaw",
    "pose_spread_pitch",
    "landmark_variance",
    "outliers_rejected",
    "self_similarity",
}


def dlib_info() -> dict:
    return DlibEmbedder().describe()


def profile_inputs(selection: dict[str, list[int]]) -> dict:
    """Stacked per-face inputs for build_profile, faces named `<person>_<index>`."""
    faces, embeddings = aligned_sample_faces(), dlib_sample_embeddings()
    parts = {key: [] for key in ("embeddings", "detection_scores", "sharpness", "crop_landmarks", "face_ids")}
    for person, indices in selection.items():
        parts["embeddings"].append(embeddings[person][indices])
        parts["detection_scores"].append(faces[person]["detection_scores"][indices])
        parts["sharpness"].append(crop_sharpness(faces[person]["crops"][indices]))
        parts["crop_landmarks"].append(faces[person]["landmarks"][indices])
        parts["face_ids"].extend(f"{person}_{i}" for i in indices)
    stacked = {key: np.concatenate(value) for key, value in parts.items() if key != "face_ids"}
    return {**stacked, "face_ids": parts["face_ids"], "crop_size": CROP_SIZE}


def test_a_face_of_another_person_is_rejected_as_an_outlier():
    inputs = profile_inputs({"hopper": [0, 1, 2, 3, 4, 5], "astronaut": [2]})
    profile, faces = build_profile("hopper", embedder=dlib_info(), **inputs)
    stats = profile["quality_stats"]
    print("distance to centre:", dict(zip(faces.face_id, faces.distance_to_centre.round(3))))
    assert stats["outlier_faces"] == ["astronaut_2"]
    assert stats["outliers_rejected"] == 1 and stats["faces_embedded"] == 7
    assert profile["num_frames"] == 6 == stats["faces_used"]
    assert faces.inlier.tolist() == [True] * 6 + [False]
    assert faces.distance_to_centre.iloc[-1] > 0.6 > faces.distance_to_centre.iloc[:6].max()


def test_same_person_sits_closer_to_the_profile_than_another_person():
    profile, _ = build_profile("hopper", embedder=dlib_info(), **profile_inputs({"hopper": [0, 1, 2, 3]}))
    loaded = json.loads(profile_json_bytes(profile))
    embeddings = dlib_sample_embeddings()
    held_out_same = distance_to_profile(loaded, embeddings["hopper"][4:])
    other = distance_to_profile(loaded, embeddings["astronaut"])
    print(f"to the hopper profile: held-out hopper {np.round(held_out_same, 3)}, astronaut {np.round(other, 3)}")
    assert held_out_same.max() < loaded["distance_threshold"] < other.min()


def test_profile_json_is_byte_identical_and_its_mean_is_unit_length():
    inputs = profile_inputs({"astronaut": [0, 1, 2, 3, 4, 5], "hopper": [1]})
    first, first_faces = build_profile("collins", embedder=dlib_info(), name="Eileen Collins", **inputs)
    second, _ = build_profile("collins", embedder=dlib_info(), name="Eileen Collins", **inputs)
    assert profile_json_bytes(first) == profile_json_bytes(second)
    loaded = json.loads(profile_json_bytes(first))
    assert REQUIRED_KEYS <= loaded.keys() and REQUIRED_QUALITY <= loaded["quality_stats"].keys()
    assert (loaded["id"], loaded["name"], loaded["embedder"], loaded["embedding_dim"]) == (
        "collins",
        "Eileen Collins",
        "dlib",
        128,
    )
    assert loaded["embedder_model_hash"] == dlib_info()["model_hash"]
    assert len(loaded["embedding_mean"]) == len(loaded["embedding_std"]) == 128
    assert np.linalg.norm(loaded["embedding_mean"]) == pytest.approx(1.0, abs=1e-5)
    # The stored centre reproduces the per-face distances up to the JSON rounding.
    np.testing.assert_allclose(
        distance_to_profile(loaded, np.stack(first_faces.embedding)), first_faces.distance_to_centre, atol=1e-4
    )
    assert 0.5 < loaded["quality_stats"]["self_similarity"] <= 1.0
    assert 0.5 < loaded["quality_stats"]["mean_detection_score"] <= 1.0
    assert loaded["quality_stats"]["avg_face_score"] == loaded["quality_stats"]["mean_detection_score"]


def test_outliers_with_the_cosine_metric():
    angles = np.radians([0.0, 4.0, -3.0, 7.0, 90.0])
    embeddings = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1)
    rejection = reject_outliers(embeddings, "cosine", cutoff=0.7)
    assert rejection.inliers.tolist() == [True, True, True, True, False]
    assert rejection.converged
    np.testing.assert_allclose(np.linalg.norm(rejection.centre), 1.0)
    assert rejection.distances[-1] > 0.9 and rejection.distances[:4].max() < 0.01


def test_one_face_gives_a_profile_with_zero_spread():
    profile, faces = build_profile("solo", embedder=dlib_info(), **profile_inputs({"hopper": [0]}))
    assert profile["num_frames"] == 1 and set(profile["embedding_std"]) == {0.0}
    assert profile["quality_stats"]["landmark_variance"] == 0.0 and faces.inlier.all()


def test_mismatched_inputs_are_refused():
    inputs = profile_inputs({"hopper": [0, 1]})
    inputs["detection_scores"] = inputs["detection_scores"][:1]
    with pytest.raises(ValueError, match="per-face inputs disagree"):
        build_profile("hopper", embedder=dlib_info(), **inputs)


def test_quality_measures_respond_to_what_they_measure():
    faces = aligned_sample_faces()["hopper"]
    crop = faces["crops"][0]
    blurred = cv2.GaussianBlur(crop, (9, 9), 3)
    assert crop_sharpness(np.stack([crop, blurred]))[1] < 0.5 * crop_sharpness(crop[None])[0]
    # Mirroring the face mirrors its yaw.
    mirrored = faces["landmarks"][:1].astype(np.float64)
    mirrored[..., 0] = CROP_SIZE - 1 - mirrored[..., 0]
    mirrored[:, [234, 454, 468, 473, 61, 291]] = mirrored[:, [454, 234, 473, 468, 291, 61]]
    yaw, pitch = pose_proxies(faces["landmarks"][:1])[0]
    mirrored_yaw, mirrored_pitch = pose_proxies(mirrored)[0]
    assert mirrored_yaw == pytest.approx(-yaw, abs=1e-5) and mirrored_pitch == pytest.approx(pitch, abs=1e-5)
    assert 0.2 < pitch < 0.8
    assert landmark_variance(np.repeat(faces["landmarks"][:1], 3, axis=0), CROP_SIZE) == 0.0
    assert landmark_variance(faces["landmarks"], CROP_SIZE) > 0.0


def test_round_floats_is_fixed_and_refuses_nan():
    assert round_floats({"a": np.float32(0.1234567891), "b": [-0.0, 3], "c": np.bool_(True)}) == {
        "a": 0.123457,
        "b": [0.0, 3],
        "c": True,
    }
    with pytest.raises(ValueError, match="non-finite"):
        round_floats({"a": float("nan")})


def test_profile_centre_restores_the_embedders_units():
    profile = {"embedding_mean": [0.6, 0.8], "embedding_mean_norm": 1.5, "embedding_metric": "euclidean"}
    np.testing.assert_allclose(profile_centre(profile), [0.9, 1.2])
    assert distance_to_profile(profile, np.array([[0.9, 1.2]]))[0] == pytest.approx(0.0, abs=1e-9)


def read_profile_as_users_do(path) -> dict:
    """How the users' identity profile format is read: a plain JSON load and these fields."""
    with open(path) as handle:
        profile = json.load(handle)
    return {
        "id": profile["id"],
        "name": profile["name"],
        "embedding_mean": profile["embedding_mean"],
        "embedding_std": profile["embedding_std"],
        "num_frames": profile["num_frames"],
        "avg_face_score": profile["quality_stats"]["avg_face_score"],
    }


@pytest.mark.slow
def test_the_published_profile_reads_in_the_users_format(project):
    """identity_profile materialized on a 10-frame clip; models/identities/<key>.json read the way
    the users' format is read, without facepipe."""
    from facepipe.sample import hopper_face, render_head_video

    render_head_video(hopper_face(160), project.folder("identity", "grace") / "grace.mp4", n_frames=10, size=160)
    project.materialize("identity", "grace", assets=project.profile_assets)
    read = read_profile_as_users_do(project.models / "identities" / "grace.json")
    assert (read["id"], read["name"], read["num_frames"]) == ("grace", "grace", 10)
    assert len(read["embedding_mean"]) == len(read["embedding_std"]) == 128  # dlib here (no ArcFace pack)
    assert all(isinstance(value, float) for value in read["embedding_mean"] + read["embedding_std"])
    assert 0.5 < read["avg_face_score"] <= 1.0
