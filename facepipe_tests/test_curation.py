"""Face-set curation: the decisions on constructed faces where the answer is known, the user's
curation.toml, and the curated_faces asset between faces and what trains on them."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from facepipe.curation import (
    Thresholds,
    curate,
    duplicates,
    face_brightness,
    face_sharpness,
    face_size_px,
    largest_cluster,
    main_person_distances,
)
from facepipe.curation_file import CURATION_FILE, CurationFileError, Overrides, read_overrides, resolve
from facepipe.embed import DlibEmbedder
from facepipe.faces import FaceSet
from facepipe.media import RESERVED_NAMES
from facepipe.sample import astronaut_face, hopper_face, render_head_video
from facepipe.store import ArtifactStore
from facepipe_tests.conftest import tiny_run_config
from facepipe_tests.test_prep_pipeline import materialized


# --------------------------------------------------------------------------- measures and decisions


def test_face_size_is_measured_in_the_source_frame():
    landmarks = np.zeros((2, 478, 2))
    landmarks[:, 1] = [120.0, 80.0]  # a 120 x 80 px landmark box in the crop
    grown = np.array([[2.0, 0, 0], [0, 2.0, 0]])  # the crop is the frame enlarged twice
    rotated = np.array([[0.0, -0.5, 0], [0.5, 0.0, 0]])  # halved and turned by 90 degrees
    np.testing.assert_allclose(face_size_px(landmarks, np.stack([grown, rotated])), [60.0, 240.0])


def test_brightness_and_sharpness_respond_to_darkness_and_blur():
    face = hopper_face(256)
    mask = np.full((256, 256), 255, np.uint8)
    crops = np.stack([face, (face * 0.12).astype(np.uint8), cv2.GaussianBlur(face, (0, 0), 3)])
    masks = np.stack([mask] * 3)
    brightness = face_brightness(crops, masks)
    assert brightness[1] < 40 < brightness[0] and abs(brightness[2] - brightness[0]) < 3
    sharpness = face_sharpness(crops, masks)
    assert sharpness[2] < 0.2 * sharpness[0]


def test_only_the_same_image_is_a_duplicate_and_the_first_one_stays():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 255, (3, 1024)).astype(np.float32)
    thumbs = np.stack([base[0], base[1], base[0] + 0.01, base[0] + 2.0, base[2], base[1]])
    candidates = np.array([True, True, True, True, True, False])
    np.testing.assert_array_equal(duplicates(thumbs, candidates, 0.05), [False, False, True, False, False, False])


def people(counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of people (euclidean, same person within 0.6): `counts[k]` faces of person k,
    each face 0.1 around its person's point, people 1.0 apart; and each face's person."""
    rng = np.random.default_rng(seed)
    centres = np.eye(len(counts), 16) * (1.0 / np.sqrt(2))
    who = np.repeat(np.arange(len(counts)), counts)
    noise = rng.normal(size=(len(who), 16))
    return centres[who] + 0.1 * noise / np.linalg.norm(noise, axis=1, keepdims=True), who


def test_a_targets_main_person_is_its_largest_group_not_its_first_faces():
    embeddings, who = people([4, 7, 3])  # the main person's faces come after another's
    assert set(who[largest_cluster(embeddings, "euclidean", 0.6)]) == {1}
    distances = main_person_distances(embeddings, np.ones(len(who), bool), "euclidean", 0.6, "target")
    np.testing.assert_array_equal(distances <= 0.6, who == 1)


def test_an_identitys_main_person_is_the_profiles_inlier_set():
    from facepipe.profile import reject_outliers

    embeddings, who = people([9, 1, 1])
    distances = main_person_distances(embeddings, np.ones(len(who), bool), "euclidean", 0.6, "identity")
    np.testing.assert_array_equal(distances <= 0.6, who == 0)
    np.testing.assert_array_equal(distances <= 0.6, reject_outliers(embeddings, "euclidean", 0.6).inliers)


def test_curate_gives_each_bad_face_its_reason_and_keeps_the_rest():
    """Eight good faces of one person, then one of each kind of bad face: the answer is known."""
    face = hopper_face(256)
    good = [np.roll(face, shift, axis=1) for shift in range(-8, 8, 2)]  # eight different images
    crops = np.stack([*good, face * 0 + 8, cv2.GaussianBlur(face, (0, 0), 3), good[0], good[1], good[2]])
    count = len(crops)
    masks = np.full((count, 256, 256), 255, np.uint8)
    landmarks = np.tile(np.array([[60.0, 60.0], [196.0, 196.0]]), (count, 239, 1))  # a 136 px box
    matrices = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (count, 1, 1))
    matrices[11] *= 4  # face 11 was a quarter of that size in its frame: 34 px
    embeddings, _ = people([count])
    embeddings[12] += np.eye(16)[15]  # face 12 is somebody else
    result = curate(crops, masks, landmarks, matrices, embeddings, "euclidean", 0.6, "identity")
    expected = {8: "dark", 9: "blurry", 10: "duplicate", 11: "small", 12: "other_person"}
    assert {i: result.dropped_reason(i) for i in range(count) if not result.kept[i]} == expected
    assert result.counts() == {"user": 0, "small": 1, "dark": 1, "blurry": 1, "other_person": 1, "duplicate": 1}

    overruled = curate(crops, masks, landmarks, matrices, embeddings, "euclidean", 0.6, "identity",
                       Thresholds(), user_keep={9}, user_drop={0})
    assert overruled.kept[9] and not overruled.kept[0] and overruled.reasons[0] == ["user"]
    assert overruled.kept_by_user == [9] and overruled.dropped_reason(10) is None  # good[0] is no longer kept first

    off = curate(crops, masks, landmarks, matrices, embeddings, "euclidean", 0.6, "identity", Thresholds(0, 0, 0, 0))
    assert off.counts() == {"user": 0, "small": 0, "dark": 0, "blurry": 0, "other_person": 1, "duplicate": 0}


# --------------------------------------------------------------------------- curation.toml


def write_curation(folder, text: str):
    (folder / CURATION_FILE).write_text(text)
    return folder / CURATION_FILE


def test_curation_file_lists_frames_and_ranges(tmp_path):
    assert read_overrides(tmp_path) == Overrides()
    write_curation(tmp_path, 'keep = ["still"]\ndrop = ["clip_000002..clip_000004", "takes/b_000001"]\n')
    overrides = read_overrides(tmp_path)
    stems = ["clip_000001", "clip_000002", "clip_000004", "clip_000005", "still", "takes/b_000001", "clip2_000003"]
    keep, drop, unmatched = resolve(overrides, stems)
    assert keep == {4} and drop == {1, 2, 5} and unmatched == []
    keep, drop, unmatched = resolve(Overrides(keep=("clip_000004", "gone"), drop=("clip_000001..clip_000009",)), stems)
    assert keep == {2} and drop == {0, 1, 3} and unmatched == ["gone"]


@pytest.mark.parametrize("text, says", [
    ("keep = [still", "not valid TOML"),
    ('keepp = ["still"]', "unknown key(s) keepp"),
    ("drop = [3]", "drop must be a list of frame names"),
    ('drop = "still"', "drop must be a list of frame names"),
    ('keep = ["a_000001..b_000004"]', "is not a range of one video's frames"),
    ('keep = ["still"]\ndrop = ["still"]', "still listed under both keep and drop"),
])
def test_a_malformed_curation_file_is_one_line_naming_it(tmp_path, text, says):
    path = write_curation(tmp_path, text)
    with pytest.raises(CurationFileError) as error:
        read_overrides(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message


def test_curation_file_is_not_media():
    assert CURATION_FILE in RESERVED_NAMES


# --------------------------------------------------------------------------- the asset


@pytest.fixture(scope="module")
def mixed_media(tmp_path_factory):
    """An identity folder with what a user's set holds besides the person: a stranger's photo, a
    dark, a blurred, a small and a duplicated copy of one still (all found by FaceMesh)."""
    folder = tmp_path_factory.mktemp("mixed")
    render_head_video(hopper_face(160), folder / "hopper.mp4", n_frames=10, size=160)
    still = hopper_face(160)
    cv2.imwrite(str(folder / "still.png"), still)
    cv2.imwrite(str(folder / "still_copy.png"), still)
    cv2.imwrite(str(folder / "stranger.png"), astronaut_face(160))
    cv2.imwrite(str(folder / "dark.png"), (still * 0.12).astype(np.uint8))
    cv2.imwrite(str(folder / "blurred.png"), cv2.GaussianBlur(still, (0, 0), 2))
    canvas = np.full((240, 240, 3), 90, np.uint8)
    canvas[60:160, 60:160] = cv2.resize(still, (100, 100), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "small.png"), canvas)
    return folder


EXPECTED_DROPS = {"dark": "dark", "blurred": "blurry", "small": "small", "stranger": "other_person",
                  "still_copy": "duplicate"}


def curation_json(project, key="mixed") -> dict:
    artifact = ArtifactStore(project.store).current("identity/curated_faces", key)
    return json.loads((artifact.path / "curation.json").read_text())


def test_curated_faces_drop_the_bad_faces_and_everything_downstream_uses_only_the_kept(project, mixed_media):
    folder = project.folder("identity", "mixed")
    for file in mixed_media.iterdir():
        shutil.copy(file, folder / file.name)
    write_curation(folder, "")  # an empty file is no override, and not media
    meta = materialized(project.materialize("identity", "mixed", assets=project.profile_assets))
    assert meta["media"]["skipped"] == []

    record = curation_json(project)
    dropped = {face["frame"]: face["reasons"][0] for face in record["faces"] if not face["kept"]}
    assert dropped == EXPECTED_DROPS
    assert sum(face["kept"] for face in record["faces"]) == 11  # ten video frames and the still
    curated = meta["curated_faces"]
    assert curated["faces_in"] == 16 and curated["faces_kept"] == 11
    assert curated["dropped_by_reason"] == {"user": 0, "small": 1, "dark": 1, "blurry": 1, "other_person": 1, "duplicate": 1}
    assert curated["dropped"].startswith("![dropped.png](data:image/png;base64,")  # the sheet, shown in the UI
    assert "| stranger | other_person |" in curated["dropped_faces"]
    assert curated["dropped_frames"] == {reason: [frame] for frame, reason in EXPECTED_DROPS.items()}

    store = ArtifactStore(project.store)
    faces = FaceSet.load(store.current("identity/faces", "mixed").path)
    kept = FaceSet.load(store.current("identity/curated_faces", "mixed").path)
    assert len(faces) == 16 and len(kept) == 11 and kept.crops.shape[1:] == faces.crops.shape[1:]
    assert list(kept.index.face_id) == list(range(11)) and "stranger.png" not in set(kept.index.source)
    rows = [i for i, source in enumerate(faces.index.source) if source == "hopper.mp4"]
    np.testing.assert_array_equal(kept.crops[:10], faces.crops[rows])  # the same faces, the same bytes
    stats = meta["identity_profile"]["quality_stats"]
    assert stats["faces_embedded"] == 11 and stats["outliers_rejected"] == 0
    # the profile takes curation's embeddings of the kept faces: the very rows it would compute
    table = pd.read_parquet(store.current("identity/identity_profile", "mixed").path / "embeddings.parquet")
    np.testing.assert_array_equal(np.stack(table.embedding), DlibEmbedder().prepare().embed_aligned(kept.crops))


def test_the_users_file_overrides_curation_and_rebuilds_only_what_depends_on_it(project, mixed_media):
    folder = project.folder("identity", "mixed")
    for file in mixed_media.iterdir():
        shutil.copy(file, folder / file.name)
    project.materialize("identity", "mixed", assets=project.profile_assets)

    write_curation(folder, 'keep = ["blurred"]\ndrop = ["hopper_000003..hopper_000004", "hopper_000099"]\n')
    run = project.materialize("identity", "mixed", run_config=tiny_run_config("identity__identity_model"),
                              assets=project.identity_assets)
    meta = materialized(run)
    assert {stage: meta[stage]["cache"] for stage in ("media", "frames", "landmarks", "faces")} == dict.fromkeys(
        ("media", "frames", "landmarks", "faces"), "hit")
    assert meta["curated_faces"]["cache"] == "built" and meta["identity_profile"]["cache"] == "built"
    record = curation_json(project)
    by_frame = {face["frame"]: face for face in record["faces"]}
    assert by_frame["blurred"]["kept"] and by_frame["blurred"]["kept_by_user"]
    assert by_frame["blurred"]["reasons"] == ["blurry"]  # what curation thought stays on record
    assert [by_frame[f"hopper_00000{i}"]["reasons"] for i in (3, 4)] == [["user"], ["user"]]
    assert record["faces_kept"] == 10 and record["override_unmatched"] == ["hopper_000099"]
    assert meta["curated_faces"]["kept_by_user"] == ["blurred"]
    logs = [e.message for e in project.instance.all_logs(run.run_id) if e.message]
    assert any("'hopper_000099' names no face" in line and CURATION_FILE in line for line in logs)
    model = meta["identity_model"]
    assert model["train_faces"] + model["holdout_faces"] == 10  # trained on the kept faces only

    write_curation(folder, 'drop = ["hopper_000000..hopper_000009", "still", "still_copy", "stranger"]\n')
    failed = project.materialize("identity", "mixed", assets=project.curated["identity"], raise_on_error=False)
    error = str(next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error)
    assert "curation dropped all 16 faces" in error and CURATION_FILE in error

    write_curation(folder, 'drop = ["hopper_000003"]\nkeep = ["hopper_000003"]\n')
    failed = project.materialize("identity", "mixed", assets=project.curated["identity"], raise_on_error=False)
    error = str(next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error)
    assert f"{folder / CURATION_FILE}: hopper_000003 listed under both keep and drop" in error
    assert "identity/curated_faces [mixed]" in error
