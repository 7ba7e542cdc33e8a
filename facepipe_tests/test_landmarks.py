"""MediaPipe landmarks on public-domain faces shipped with matplotlib and scikit-image."""

from __future__ import annotations

import os
import sys

import cv2
import matplotlib
import numpy as np
import pytest
import skimage.data

from facepipe.align import five_points
from facepipe.landmarks import (
    BOX_COLUMNS,
    NUM_POINTS,
    LandmarkResult,
    choose_face,
    detect_landmarks,
    detect_static,
    matched_score,
)

# Where the Hopper photo's face is (px), measured with the full-range detector: x 157..367, y 126..335.
HOPPER_FACE_CENTRE = (262.0, 230.0)


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    return cv2.imread(path)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def hopper_crop(hopper) -> np.ndarray:
    return hopper[60:420, 80:440]  # 360x360, face about 190 px wide


@pytest.fixture(scope="module")
def astronaut_crop(astronaut) -> np.ndarray:
    return cv2.resize(astronaut[20:230, 120:330], (300, 300))  # face about 130 px wide


@pytest.fixture(scope="module")
def two_faces(hopper_crop, astronaut_crop) -> np.ndarray:
    """Hopper (larger face) on the left, the astronaut (smaller face) on the right.
    At this layout FaceMesh lists the astronaut first, so taking the first face would fail."""
    canvas = np.full((360, 660, 3), 255, dtype=np.uint8)
    canvas[:, :360] = hopper_crop
    canvas[30:330, 360:660] = astronaut_crop
    return canvas


@pytest.fixture(scope="module")
def blank() -> np.ndarray:
    return np.full((480, 640, 3), 128, dtype=np.uint8)


@pytest.fixture(scope="module")
def stills_result(hopper, blank, two_faces) -> LandmarkResult:
    """Stills of different sizes in one call: a face, no face, two faces."""
    return detect_landmarks([(hopper, None), (blank, None), (two_faces, None)])


def test_hopper_still_has_478_points_inside_the_face(stills_result, hopper):
    points = stills_result.points[0]
    height, width = hopper.shape[:2]
    assert points.shape == (NUM_POINTS, 3) and points.dtype == np.float32
    assert np.isfinite(points).all()
    assert (points[:, 0] >= 0).all() and (points[:, 0] < width).all()
    assert (points[:, 1] >= 0).all() and (points[:, 1] < height).all()
    assert stills_result.detected[0]
    assert stills_result.score[0] > 0.5
    assert stills_result.num_faces[0] == 1
    x0, y0, x1, y1 = stills_result.box[0]
    assert x0 < HOPPER_FACE_CENTRE[0] < x1 and y0 < HOPPER_FACE_CENTRE[1] < y1
    assert 150 < x1 - x0 < 260 and 150 < y1 - y0 < 260
    # The box is the landmarks' bounding box.
    np.testing.assert_allclose(stills_result.box[0], [*points[:, :2].min(0), *points[:, :2].max(0)])
    # Iris 468 is on the image left (what align.IRIS_FIVE_POINTS assumed), and so is the first
    # eye contour (what align.five_points relies on: template order, image left first).
    assert points[468, 0] < points[473, 0]
    eyes = five_points(points)[:2]
    assert eyes[0, 0] < eyes[1, 0]
    assert np.linalg.norm(eyes[0] - points[468, :2]) < 0.25 * np.linalg.norm(eyes[1] - eyes[0])


def test_blank_image_is_recorded_as_no_face(stills_result):
    assert not stills_result.detected[1]
    assert np.isnan(stills_result.points[1]).all()
    assert np.isnan(stills_result.box[1]).all()
    assert stills_result.score[1] == 0
    assert stills_result.num_faces[1] == 0


def test_two_faces_keeps_the_larger_one(stills_result):
    assert stills_result.detected[2]
    assert stills_result.num_faces[2] == 2
    x0, y0, x1, y1 = stills_result.box[2]
    assert x1 < 360, "the chosen face should be Hopper's, on the left half"
    assert stills_result.score[2] > 0.5


def test_choose_face_prefers_area_then_centre():
    small_centred = [90, 90, 110, 110]
    large_corner = [0, 0, 50, 50]
    assert choose_face(np.array([small_centred, large_corner]), 200, 200) == 1
    equal_far = [150, 150, 190, 190]
    equal_near = [80, 80, 120, 120]
    assert choose_face(np.array([equal_far, equal_near]), 200, 200) == 1
    assert choose_face(np.array([equal_near, equal_far]), 200, 200) == 0


def test_face_missed_by_the_detector_scores_zero():
    face = np.array([100, 100, 200, 200], dtype=np.float32)
    assert matched_score(face, np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) == 0.0
    elsewhere = np.array([[300, 300, 400, 400]], dtype=np.float32)
    assert matched_score(face, elsewhere, np.array([0.9], np.float32)) == 0.0
    overlapping = np.array([[300, 300, 400, 400], [105, 110, 195, 200]], dtype=np.float32)
    assert matched_score(face, overlapping, np.array([0.9, 0.7], np.float32)) == pytest.approx(0.7)


def test_detect_static_matches_still_mode(stills_result, hopper, blank):
    np.testing.assert_allclose(detect_static(hopper), stills_result.points[0], atol=1e-3)
    assert detect_static(blank) is None


def _on_canvas(face: np.ndarray, x: int, y: int) -> np.ndarray:
    canvas = np.full((400, 720, 3), 255, dtype=np.uint8)
    canvas[y : y + face.shape[0], x : x + face.shape[1]] = face
    return canvas


def test_video_groups_track_separately(hopper_crop, astronaut_crop):
    # Two "files" with faces in different places. With max_faces=1 FaceMesh only re-detects
    # when tracking is lost, so a tracker carried over from file a would look for the face on
    # the left of file b's first frame and miss it.
    shifts = [0, 3, 6, 9]
    items = [(_on_canvas(hopper_crop, 10 + s, 20), "a.mp4") for s in shifts]
    items += [(_on_canvas(astronaut_crop, 380 + s, 50), "b.mp4") for s in shifts]
    done: list[int] = []
    result = detect_landmarks(items, max_faces=1, progress=done.append)

    assert done == list(range(1, len(items) + 1))
    assert result.detected.all()
    assert (result.score > 0.5).all()
    centres_x = (result.box[:, 0] + result.box[:, 2]) / 2
    assert (result.box[:4, 2] < 380).all(), "file a's face is on the left"
    assert (result.box[4:, 0] > 380).all(), "file b's face is on the right"
    # The tracked face follows the 9 px shift within each file.
    assert abs((centres_x[3] - centres_x[0]) - 9) < 5
    assert abs((centres_x[7] - centres_x[4]) - 9) < 5
    # The detector scores the first face of each file's track; the rest of a track carries it.
    assert result.score_measured.tolist() == [True, False, False, False] * 2
    assert result.score[:4].tolist() == [result.score[0]] * 4 and result.score[4:].tolist() == [result.score[4]] * 4


def test_detector_scores_again_after_a_tracking_loss_and_with_several_faces(hopper_crop, astronaut_crop):
    blank = np.full((400, 720, 3), 255, dtype=np.uint8)
    one = [_on_canvas(hopper_crop, 10 + s, 20) for s in (0, 3)]
    two = _on_canvas(hopper_crop, 10, 20)
    two[50 : 50 + astronaut_crop.shape[0], 380 : 380 + astronaut_crop.shape[1]] = astronaut_crop
    frames = [*one, blank, *one, two, two, *one]
    result = detect_landmarks([(frame, "clip.mp4") for frame in frames], max_faces=2)
    assert result.detected.tolist() == [True, True, False, True, True, True, True, True, True]
    assert result.num_faces.tolist() == [1, 1, 0, 1, 1, 2, 2, 1, 1]
    # first face; a carried frame; none; after the loss; carried; several faces (each scored);
    # one face again (the count changed); carried
    assert result.score_measured.tolist() == [True, False, False, True, False, True, True, True, False]
    assert (result.score[result.detected] > 0.5).all()


def test_table_and_save_load_roundtrip(stills_result, tmp_path):
    table = stills_result.to_table()
    assert list(table.columns) == ["detected", "score", *BOX_COLUMNS, "num_faces", "score_measured"]
    assert len(table) == len(stills_result) == 3
    assert table["detected"].tolist() == [True, False, True]
    assert table["num_faces"].tolist() == [1, 0, 2]

    stills_result.save(tmp_path / "landmarks")
    loaded = LandmarkResult.load(tmp_path / "landmarks")
    for name in ("points", "detected", "score", "box", "num_faces", "score_measured"):
        original, restored = getattr(stills_result, name), getattr(loaded, name)
        assert restored.dtype == original.dtype, name
        np.testing.assert_array_equal(restored, original, err_msg=name)


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="points.npy"):
        LandmarkResult.load(tmp_path)


def test_empty_input_and_bad_images():
    assert len(detect_landmarks([])) == 0
    gray = np.zeros((64, 64), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"frame 0 \(group 'v.mp4'\).*HxWx3 uint8"):
        detect_landmarks([(gray, "v.mp4")])


def landmark_list(points, visibility=None):
    from mediapipe.framework.formats import landmark_pb2

    listed = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in points:
        listed.landmark.add(x=x, y=y, z=z)
    if visibility is not None:
        listed.landmark[0].visibility = visibility
    return listed


def test_landmarks_read_from_the_wire_are_the_attribute_values_and_other_layouts_fall_back():
    from facepipe.landmarks import _normalised_points

    points = np.random.default_rng(0).normal(size=(NUM_POINTS, 3)).astype(np.float32)
    points[5] = 0.0  # zeros set explicitly are on the wire too
    for listed in (landmark_list(points), landmark_list(points, visibility=0.9)):  # the second: not FaceMesh's layout
        by_attribute = np.array([(p.x, p.y, p.z) for p in listed.landmark], dtype=np.float64)
        assert np.array_equal(_normalised_points(listed), by_attribute)
        assert np.array_equal(_normalised_points(listed), points.astype(np.float64))


def test_long_runs_are_cut_into_segments_warmed_up_on_their_own_video():
    from facepipe.landmarks import MIN_SEGMENT_FRAMES, WARM_UP_FRAMES, Segment, tracking_segments

    short = ["a.mp4"] * (2 * MIN_SEGMENT_FRAMES - 1)
    assert tracking_segments(short) == [Segment(0, 0, len(short))]  # too short to be worth a second graph
    video = ["a.mp4"] * 500
    assert tracking_segments(video) == [Segment(0, 0, 250), Segment(250 - WARM_UP_FRAMES, 250, 500)]
    # cut where another video starts: nothing of the previous video to warm up on
    assert tracking_segments(["a.mp4"] * 250 + ["b.mp4"] * 250)[1] == Segment(250, 250, 500)
    # cut 3 frames into a video: only those 3 frames warm it up
    assert tracking_segments(["a.mp4"] * 247 + ["b.mp4"] * 253)[1] == Segment(247, 250, 500)
    # a still is not tracked: no warm-up for it
    assert tracking_segments(["a.mp4"] * 250 + [None] * 250)[1] == Segment(250, 250, 500)


def test_segments_tracked_in_parallel_find_what_one_graph_finds(hopper_crop):
    """A 24-frame moving face cut in two: the same frames detected, the same face counts and
    landmarks within a pixel of one graph's; the second segment's warm-up frames are not in the
    result, and the detector scores its first frame (a track of its own)."""
    from facepipe.landmarks import Segment, detect_landmarks_in_segments

    items = [(_on_canvas(hopper_crop, 10 + 3 * i, 20 + i // 2), "clip.mp4") for i in range(24)]
    one_graph = detect_landmarks(items)
    done: list[int] = []
    segmented = detect_landmarks_in_segments([Segment(0, 0, 12), Segment(4, 12, 24)],
                                             lambda first, end: items[first:end], progress=done.append)
    assert len(segmented) == 24 and sorted(done) == done and done[-1] == 24
    assert np.array_equal(segmented.detected, one_graph.detected) and segmented.detected.all()
    assert np.array_equal(segmented.num_faces, one_graph.num_faces)
    distances = np.linalg.norm(segmented.points[..., :2] - one_graph.points[..., :2], axis=2).mean(axis=1)
    assert np.array_equal(segmented.points[:12], one_graph.points[:12]) and distances.max() < 1.0
    assert segmented.score_measured.tolist() == [True] + [False] * 11 + [True] + [False] * 11


@pytest.mark.parametrize("size, reduction", [((1920, 1080), 2), ((1080, 1920), 2), ((1280, 720), 1), ((1919, 1079), 1),
                                             ((3840, 2160), 4), ((640, 480), 1), ((8640, 4320), 8)])
def test_frames_of_1080_lines_or_more_are_tracked_reduced_to_540_or_more(size, reduction):
    from facepipe.landmarks import tracking_reduction

    assert tracking_reduction(*size) == reduction


def test_a_frame_tracked_at_half_size_gives_the_full_decodes_landmarks_in_frame_pixels(hopper_crop, tmp_path):
    """A 1080p frame stored as the frames asset stores it, tracked decoded in full and at half size:
    the same faces, points in the frame's pixels within a pixel of the full decode's and not shifted
    (a reduced pixel centres on 2x + 0.5), the same detector score."""
    from facepipe.media import read_frame, write_frame_file

    face = cv2.resize(hopper_crop, (1080, 1080), interpolation=cv2.INTER_CUBIC)  # face ~570 px wide
    paths = []
    for i in range(3):
        frame = np.full((1080, 1920, 3), 120, dtype=np.uint8)
        frame[:, 300 + 20 * i:1380 + 20 * i] = face
        paths.append(tmp_path / f"{i:06d}.jpg")
        write_frame_file(paths[-1], frame)
    full = detect_landmarks([(read_frame(path, rgb=True), "clip.mp4") for path in paths], rgb=True)
    half_images = [read_frame(path, rgb=True, reduction=2) for path in paths]
    assert half_images[0].shape == (540, 960, 3)
    half = detect_landmarks([(image, "clip.mp4", 2) for image in half_images], rgb=True)
    assert full.detected.all() and half.detected.all() and np.array_equal(full.num_faces, half.num_faces)
    offsets = half.points[..., :2] - full.points[..., :2]
    assert np.linalg.norm(offsets, axis=2).mean() < 1.0
    assert np.abs(offsets.mean(axis=(0, 1))).max() < 0.25
    assert np.abs(half.box - full.box).max() < 4.0
    assert np.allclose(half.score, full.score, atol=0.05) and half.score[0] > 0.5


def test_mediapipes_start_up_chatter_stays_off_stderr(hopper, hopper_crop, capfd):
    # Each fresh graph (the detector, a still graph, a video graph) logs its start-up from C++.
    detect_static(hopper)
    detect_landmarks([(hopper_crop, "clip.mp4"), (hopper_crop, "clip.mp4")])
    err = capfd.readouterr().err
    assert "inference_feedback_manager" not in err and "XNNPACK" not in err, err


def test_lines_written_beside_the_chatter_still_reach_stderr(capfd):
    from facepipe.native_stderr import chatter_dropped

    with chatter_dropped():
        os.write(2, b"W0000 00:00:1.0 1 inference_feedback_manager.cc:114] Feedback manager requires a model "
                    b"with a single signature inference. Disabling support for feedback tensors.\n")
        os.write(2, b"E0000 calculator_graph.cc:887] a real error\n")
        print("python's own stderr line", file=sys.stderr)
    # (pytest captures Python's sys.stderr apart from descriptor 2, so the order is not compared.)
    assert sorted(capfd.readouterr().err.splitlines()) == ["E0000 calculator_graph.cc:887] a real error",
                                                           "python's own stderr line"]
