"""Embedders on real faces: dlib's pretrained descriptor on aligned crops of two public-domain
photos, and the ArcFace path with a small ONNX model that has ArcFace's shapes."""

from __future__ import annotations

import functools
import os

import cv2
import matplotlib
import numpy as np
import onnx
import pytest
import skimage.data
from onnx import TensorProto, helper

from facepipe.align import align_face, five_points, template_points
from facepipe.embed import (
    ArcFaceEmbedder,
    DlibEmbedder,
    dlib_face_box,
    embedding_distance,
    get_embedder,
)
from facepipe.landmarks import detect_landmarks, detect_static

CROP_SIZE = 256

# (rotation degrees, x shift px, brightness gain, mirror): small changes a video of the same
# person brings, applied to the photo before detection so each crop is landmarked and aligned
# on its own, like frames are.
VARIATIONS = [
    (0, 0, 1.0, False),
    (6, 10, 1.0, False),
    (-6, -8, 1.15, False),
    (3, 0, 0.8, True),
    (-3, 12, 1.0, True),
    (0, -10, 1.25, False),
]


def sample_photos() -> dict[str, np.ndarray]:
    """BGR photos: Grace Hopper (US Navy) and Eileen Collins (NASA), both public domain."""
    hopper = cv2.imread(
        os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    )
    astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    return {"hopper": hopper, "astronaut": astronaut}


def varied(image: np.ndarray, rotation: float, shift: float, gain: float, mirror: bool) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rotation, 1.0)
    matrix[0, 2] += shift
    out = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    out = np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out[:, ::-1]) if mirror else out


@functools.cache
def aligned_sample_faces() -> dict[str, dict[str, np.ndarray]]:
    """Per person: `crops` [6, 256, 256, 3] BGR uint8, `points5` [6, 5, 2] (the template, as
    the faces stage provides), `landmarks` [6, 478, 2] in crop pixels, `detection_scores` [6],
    made by the project's own landmark detection and alignment."""
    faces = {}
    for person, photo in sample_photos().items():
        images = [varied(photo, *variation) for variation in VARIATIONS]
        detected = detect_landmarks((image, None) for image in images)
        assert detected.detected.all(), f"MediaPipe missed a face in a variation of the {person} photo"
        aligned = [align_face(image, points, CROP_SIZE) for image, points in zip(images, detected.points)]
        faces[person] = {
            "crops": np.stack([crop for crop, _, _, _ in aligned]),
            "points5": np.repeat(template_points(CROP_SIZE)[None], len(images), axis=0),
            "landmarks": np.stack([crop_landmarks for _, _, crop_landmarks, _ in aligned]),
            "detection_scores": detected.score.astype(np.float64),
        }
    return faces


@functools.cache
def dlib_sample_embeddings() -> dict[str, np.ndarray]:
    embedder = DlibEmbedder().prepare()
    return {person: embedder.embed(face["crops"], face["points5"]) for person, face in aligned_sample_faces().items()}


# --- dlib -------------------------------------------------------------------------------


def test_dlib_box_on_an_aligned_crop_is_the_measured_detector_box():
    assert dlib_face_box(template_points(CROP_SIZE)) == (46, 64, 201, 219)


def test_dlib_box_from_five_points_matches_dlibs_detector_on_the_raw_photo():
    import dlib

    photo = sample_photos()["hopper"]
    left, top, right, bottom = dlib_face_box(five_points(detect_static(photo)))
    detected = dlib.get_frontal_face_detector()(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB), 0)
    assert len(detected) == 1
    box = detected[0]
    overlap_w = max(0, min(right, box.right()) - max(left, box.left()))
    overlap_h = max(0, min(bottom, box.bottom()) - max(top, box.top()))
    overlap = overlap_w * overlap_h
    union = (right - left) * (bottom - top) + box.width() * box.height() - overlap
    assert overlap / union > 0.7, ((left, top, right, bottom), box)


def test_dlib_same_person_is_closer_than_another_person():
    embeddings = dlib_sample_embeddings()
    hopper, astronaut = embeddings["hopper"], embeddings["astronaut"]
    assert hopper.shape == (6, 128) and hopper.dtype == np.float32
    same = np.concatenate(
        [
            embedding_distance(hopper, hopper, "euclidean")[np.triu_indices(6, 1)],
            embedding_distance(astronaut, astronaut, "euclidean")[np.triu_indices(6, 1)],
        ]
    )
    other = embedding_distance(hopper, astronaut, "euclidean").ravel()
    print(f"dlib same person: {same.min():.3f}-{same.max():.3f}, other person: {other.min():.3f}-{other.max():.3f}")
    threshold = DlibEmbedder.distance_threshold
    assert same.max() < threshold < other.min()


def test_dlib_is_deterministic_and_batch_independent():
    faces = aligned_sample_faces()["hopper"]
    embedder = DlibEmbedder()
    first = embedder.embed(faces["crops"][:3], faces["points5"][:3])
    again = embedder.embed(faces["crops"][:3], faces["points5"][:3])
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() == dlib_sample_embeddings()["hopper"][:3].tobytes()


def test_dlib_describes_itself_with_a_weight_hash():
    embedder = DlibEmbedder()
    info = embedder.describe()
    assert info["name"] == "dlib" and info["dim"] == 128 and info["metric"] == "euclidean"
    assert info["distance_threshold"] == 0.6
    assert len(info["model_hash"]) == 64 and int(info["model_hash"], 16) >= 0
    assert info["model_files"] == ["dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"]
    assert embedder.distance(np.zeros(128), np.ones(128)) == pytest.approx(np.sqrt(128))


def test_embed_rejects_inputs_that_break_the_faces_contract():
    faces = aligned_sample_faces()["hopper"]
    embedder = DlibEmbedder()
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(faces["crops"][:1].astype(np.float32), faces["points5"][:1])
    with pytest.raises(ValueError, match="points5"):
        embedder.embed(faces["crops"][:2], faces["points5"][:1])


# --- ArcFace ------------------------------------------------------------------------------

ARCFACE_PIXELS = 3 * 112 * 112
# Which input values the test model copies to its 512 outputs: spread over all three
# channels, so a wrong channel order, layout or normalisation changes the output.
PICKED = np.sort(np.random.default_rng(0).choice(ARCFACE_PIXELS, 512, replace=False)).astype(np.int64)


def save_model(nodes, inputs, outputs, initializers, path) -> None:
    graph = helper.make_graph(nodes, "test_graph", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def save_pixel_picking_arcface(path, normalise_inside: bool = False) -> None:
    """[N, 3, 112, 112] -> [N, 512]: flattens the input and returns the PICKED values, so
    its output shows exactly what the embedder fed it. With `normalise_inside` the graph
    starts with Sub and Mul, like insightface's mxnet conversions that take raw pixels."""
    nodes, initializers = (
        [],
        [
            helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, ARCFACE_PIXELS]),
            helper.make_tensor("picked", TensorProto.INT64, [512], PICKED.tolist()),
        ],
    )
    source = "data"
    if normalise_inside:
        initializers += [
            helper.make_tensor("mean", TensorProto.FLOAT, [], [127.5]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 127.5]),
        ]
        nodes += [
            helper.make_node("Sub", ["data", "mean"], ["centred"], name="Sub_0"),
            helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="Mul_1"),
        ]
        source = "scaled"
    nodes += [
        helper.make_node("Reshape", [source, "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gather", ["flat", "picked"], ["fc1"], name="pick", axis=1),
    ]
    save_model(
        nodes,
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["batch", 512])],
        initializers,
        path,
    )


def save_detector_shaped_model(path) -> None:
    """A pack also holds a detector: [1, 3, 640, 640] input, not a recognition model."""
    save_model(
        [helper.make_node("GlobalAveragePool", ["input.1"], ["score"], name="pool")],
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 3, 1, 1])],
        [],
        path,
    )


@pytest.fixture
def fake_pack(tmp_path):
    pack = tmp_path / "packs" / "tiny_pack"
    pack.mkdir(parents=True)
    save_detector_shaped_model(pack / "det_tiny.onnx")
    (pack / "broken.onnx").write_bytes(b"not an onnx model")
    save_pixel_picking_arcface(pack / "recognition_tiny.onnx")
    return pack


def expected_arcface_rows(crops_bgr: np.ndarray, points5: np.ndarray) -> np.ndarray:
    """insightface's convention written out: norm_crop to the 112 ArcFace template, RGB,
    (x - 127.5) / 127.5, NCHW; then the test model's pick and L2 normalisation."""
    from insightface.utils import face_align

    rows = []
    for crop, points in zip(crops_bgr, points5):
        aligned = face_align.norm_crop(crop, landmark=points.astype(np.float32), image_size=112)
        chw = ((aligned[:, :, ::-1].astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)
        picked = chw.reshape(-1)[PICKED]
        rows.append(picked / np.linalg.norm(picked))
    return np.stack(rows)


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # inside insightface
def test_arcface_finds_the_recognition_model_by_shape_and_embeds(fake_pack):
    faces = aligned_sample_faces()["astronaut"]
    embedder = ArcFaceEmbedder(fake_pack)
    assert embedder.model_path.name == "recognition_tiny.onnx"
    embeddings = embedder.embed(faces["crops"][:2], faces["points5"][:2])
    assert embeddings.shape == (2, 512) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embeddings, expected_arcface_rows(faces["crops"][:2], faces["points5"][:2]), atol=1e-6)
    info = embedder.describe()
    assert (info["name"], info["dim"], info["metric"]) == ("arcface", 512, "cosine")
    assert info["model_files"] == ["recognition_tiny.onnx"] and len(info["model_hash"]) == 64


def test_arcface_follows_insightface_for_models_that_normalise_inside(tmp_path, fake_pack):
    pack = tmp_path / "mxnet_style"
    pack.mkdir()
    save_pixel_picking_arcface(pack / "w600k_r50.onnx", normalise_inside=True)
    faces = aligned_sample_faces()["hopper"]
    inside = ArcFaceEmbedder(pack).embed(faces["crops"][:1], faces["points5"][:1])
    outside = ArcFaceEmbedder(fake_pack).embed(faces["crops"][:1], faces["points5"][:1])
    np.testing.assert_allclose(inside, outside, atol=1e-6)


def test_missing_arcface_pack_names_the_path_and_the_option(tmp_path):
    missing = tmp_path / "no_such_pack"
    with pytest.raises(FileNotFoundError) as error:
        get_embedder("arcface", arcface_pack=missing)
    assert str(missing) in str(error.value) and "arcface_pack" in str(error.value)
    empty = tmp_path / "empty_pack"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no ArcFace recognition model"):
        ArcFaceEmbedder(empty)


def test_auto_picks_arcface_with_a_pack_and_dlib_without(tmp_path, fake_pack):
    assert get_embedder("auto", arcface_pack=fake_pack).name == "arcface"
    assert get_embedder("auto", arcface_pack=tmp_path / "no_such_pack").name == "dlib"
    assert get_embedder("dlib", arcface_pack=fake_pack).name == "dlib"
    with pytest.raises(ValueError, match="auto, arcface, dlib"):
        get_embedder("facenet")
