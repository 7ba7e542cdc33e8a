"""Face landmarks: MediaPipe FaceMesh (478 refined points) with a detection score per frame.

Frames come from one of two kinds of source:
- video frames (a group id, the source file): FaceMesh runs in tracking mode, with a fresh
  graph for every group, so tracking never carries a face from one file into the next (a long
  run of frames is tracked in segments at once, see `tracking_segments`);
- stills (group None): FaceMesh runs in static mode, each image on its own.

Face choice policy (several faces in a frame): keep the face with the largest landmark
bounding-box area; on an exact tie, the one whose box centre is nearest the image centre.
A swap dataset is about the main subject, who is normally the largest face in the shot.
In tracking mode the choice is made per frame, so two faces of nearly equal size may swap
roles between frames; downstream identity filtering (identity_profile) rejects such frames.

Score: FaceMesh's legacy API reports no confidence, so a chosen face is matched to the
full-range face detector (mp.solutions.face_detection, model_selection=1) by box IoU and takes
that detection's score. When FaceMesh finds a face that the detector misses (no detection
with IoU >= SCORE_MATCH_MIN_IOU), the face is kept with score 0.0: FaceMesh's own detector
already accepted it, and downstream stages can filter on the score.
The detector runs only where it can tell something new (it costs about as much as FaceMesh
itself): on every still, and in a video on the first face of a track — the first frame with a
face, the first of a tracking segment, the first after a frame without one (a tracking loss), a
frame whose face count differs from the previous frame's, a frame with several faces (the
several-faces policy), and a frame whose chosen face does not overlap the previous one
(IoU < SCORE_MATCH_MIN_IOU: another face).
Every other frame of a track carries the score its track was given. `score_measured` says which
frames the detector scored. Landmarks, boxes and face counts come from FaceMesh alone, so they
are the same as with the detector on every frame.
When FaceMesh finds nothing: detected False, score 0, NaN points and box, num_faces 0.

Coordinates are pixels of the frame they came from: x, y in px; z is MediaPipe's relative
depth scaled by the image width (MediaPipe documents z on "roughly the same scale as x").
`box` is the bounding box of the chosen face's landmarks (x0, y0, x1, y1).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from facepipe.align import REDUCTIONS
from facepipe.native_stderr import chatter_dropped
from facepipe.pipelining import map_ordered

NUM_POINTS = 478
# IoU between the mesh's landmark box and a detector box for the two to count as one face.
# The detector box is a little tighter than the landmark box (measured IoU ~0.85 on the sample
# faces), so 0.3 only rejects a detection of another face.
SCORE_MATCH_MIN_IOU = 0.3
# Low on purpose: the detector only provides a score for faces FaceMesh already found, so
# weak detections are wanted (they become low scores) rather than dropped (score 0).
DETECTOR_MIN_CONFIDENCE = 0.1

POINTS_FILENAME = "points.npy"
TABLE_FILENAME = "table.parquet"
BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")


@dataclass
class LandmarkResult:
    """Per-frame landmarks for N frames, in the order the frames were given."""

    points: np.ndarray  # float32 [N, 478, 3], px; NaN where no face
    detected: np.ndarray  # bool [N]
    score: np.ndarray  # float32 [N], detector confidence of the chosen face (or of its track, see score_measured); 0 if none
    box: np.ndarray  # float32 [N, 4], x0, y0, x1, y1 px; NaN where no face
    num_faces: np.ndarray  # int32 [N], faces FaceMesh found (at most max_faces)
    score_measured: np.ndarray | None = None  # bool [N], the detector scored this frame (else the track's score)

    def __post_init__(self) -> None:
        if self.score_measured is None:
            self.score_measured = np.asarray(self.detected, dtype=bool).copy()
        self.score_measured = np.asarray(self.score_measured, dtype=bool)
        self.points = np.asarray(self.points, dtype=np.float32)
        self.detected = np.asarray(self.detected, dtype=bool)
        self.score = np.asarray(self.score, dtype=np.float32)
        self.box = np.asarray(self.box, dtype=np.float32)
        self.num_faces = np.asarray(self.num_faces, dtype=np.int32)
        count = len(self.detected)
        expected = {
            "points": (count, NUM_POINTS, 3),
            "detected": (count,),
            "score": (count,),
            "box": (count, 4),
            "num_faces": (count,),
            "score_measured": (count,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"LandmarkResult.{name} has shape {getattr(self, name).shape}, expected {shape}")

    def __len__(self) -> int:
        return len(self.detected)

    def to_table(self) -> pd.DataFrame:
        """One row per frame: detected, score, box_x0..box_y1, num_faces, score_measured."""
        table = pd.DataFrame({"detected": self.detected, "score": self.score})
        for column, values in zip(BOX_COLUMNS, self.box.T):
            table[column] = values
        table["num_faces"] = self.num_faces
        table["score_measured"] = self.score_measured
        return table

    def save(self, folder: str | Path) -> None:
        """Write points as `points.npy` and the per-frame table as `table.parquet` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / POINTS_FILENAME, self.points, allow_pickle=False)
        self.to_table().to_parquet(folder / TABLE_FILENAME, index=False)

    @classmethod
    def concatenate(cls, parts: Sequence[LandmarkResult]) -> LandmarkResult:
        """The frames of `parts`, one after the other."""
        joined = lambda field: np.concatenate([getattr(part, field) for part in parts])  # noqa: E731
        return cls(points=joined("points"), detected=joined("detected"), score=joined("score"), box=joined("box"),
                   num_faces=joined("num_faces"), score_measured=joined("score_measured"))

    @classmethod
    def load(cls, folder: str | Path) -> LandmarkResult:
        """Read a result written by `save`."""
        folder = Path(folder)
        points_path, table_path = folder / POINTS_FILENAME, folder / TABLE_FILENAME
        for path in (points_path, table_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: {folder} is not a complete landmarks folder; "
                    "re-materialize the landmarks asset"
                )
        points = np.load(points_path, allow_pickle=False)
        table = pd.read_parquet(table_path)
        if len(table) != len(points):
            raise ValueError(
                f"{folder}: {TABLE_FILENAME} has {len(table)} rows but {POINTS_FILENAME} has "
                f"{len(points)} frames; re-materialize the landmarks asset"
            )
        return cls(
            points=points,
            detected=table["detected"].to_numpy(),
            score=table["score"].to_numpy(),
            box=table[list(BOX_COLUMNS)].to_numpy(),
            num_faces=table["num_faces"].to_numpy(),
            score_measured=table["score_measured"].to_numpy() if "score_measured" in table else None,
        )


def landmark_box(points: np.ndarray) -> np.ndarray:
    """x0, y0, x1, y1 bounding box of [P, >=2] pixel landmarks."""
    xy = np.asarray(points)[:, :2]
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)]).astype(np.float32)


def box_iou(box_a: np.ndarray, box_b: np.ndarray) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    inter_w = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
    inter_h = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    intersection = float(inter_w) * float(inter_h)
    area_a = float(box_a[2] - box_a[0]) * float(box_a[3] - box_a[1])
    area_b = float(box_b[2] - box_b[0]) * float(box_b[3] - box_b[1])
    return intersection / (area_a + area_b - intersection)


def choose_face(boxes: np.ndarray, width: int, height: int) -> int:
    """Index of the face to keep: the largest box area, ties broken by nearness to the image centre."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        raise ValueError("choose_face needs at least one box")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    distances = np.hypot(centres[:, 0] - width / 2, centres[:, 1] - height / 2)
    # lexsort sorts by the last key first: area (descending), then distance.
    return int(np.lexsort((distances, -areas))[0])


# FaceMesh on a frame decoded at 1/r of its size (libjpeg's DCT scaling): the frame's shorter side
# stays at least this long. FaceMesh's own detector finds only faces of about a tenth of the frame's
# width or more (kim_7s's face shrunk to 157 px in a 1920x1080 frame is found in no frame, at 210 px
# in every one), so at 540 px those faces still span 100 px or more: on kim_7s (faces 314 px wide),
# the same shrunk to 210 and 251 px, and mead_w040_happy (417 px), all at 1920x1080, half-size
# decoding finds the same faces in the same frames, its landmarks 0.28-0.37 px from the full
# decode's on average (p99 0.77-1.18 px) once mapped back as below; a half-size decode costs a
# third of a full one, and FaceMesh's image transform less.
MIN_TRACKING_SIDE = 540


def tracking_reduction(width: int, height: int) -> int:
    """The largest JPEG reduction (align.REDUCTIONS, else 1) a frame of this size is tracked at (MIN_TRACKING_SIDE)."""
    return next((r for r in REDUCTIONS if min(width, height) // r >= MIN_TRACKING_SIDE), 1)


def _mesh_faces_in_pixels(mesh_result, width: int, height: int, reduction: int = 1) -> np.ndarray:
    """[F, 478, 3] landmarks of every face in a FaceMesh result on an image `width` x `height`, in
    pixels of the frame it was decoded from at 1/`reduction` of its size: a reduced pixel x is
    centred on the frame's r * x + (r - 1) / 2 (as in align.reduced_matrix); z scales with x."""
    faces = mesh_result.multi_face_landmarks or []
    normalised = np.array([_normalised_points(face) for face in faces], dtype=np.float64).reshape(len(faces), NUM_POINTS, 3)
    offset = (reduction - 1) / 2
    return (normalised * np.array([width, height, width]) * reduction + np.array([offset, offset, 0.0])).astype(np.float32)


# A NormalizedLandmark on the wire as FaceMesh fills it: a length-delimited field 1 of 15 bytes
# holding x, y and z as fixed32 fields 1, 2, 3 (proto2 writes set fields even when 0), nothing else.
_LANDMARK_WIRE = np.dtype([("key", "u1"), ("size", "u1"), ("x_key", "u1"), ("x", "<f4"), ("y_key", "u1"), ("y", "<f4"),
                           ("z_key", "u1"), ("z", "<f4")])
_LANDMARK_WIRE_BYTES = {"key": 0x0A, "size": 15, "x_key": 0x0D, "y_key": 0x15, "z_key": 0x1D}


def _normalised_points(face) -> np.ndarray:
    """[478, 3] (x, y, z) of one face's NormalizedLandmarkList, read from its serialized bytes when
    they have FaceMesh's layout (~15 us a face, where reading 1434 attributes from Python takes
    ~0.35 ms, on the thread that feeds FaceMesh); otherwise attribute by attribute. Same float32
    values either way."""
    data = face.SerializeToString()
    if len(data) == NUM_POINTS * _LANDMARK_WIRE.itemsize:
        records = np.frombuffer(data, dtype=_LANDMARK_WIRE)
        if all(bool((records[field] == byte).all()) for field, byte in _LANDMARK_WIRE_BYTES.items()):
            return np.stack([records["x"], records["y"], records["z"]], axis=1).astype(np.float64)
    return np.array([(point.x, point.y, point.z) for point in face.landmark], dtype=np.float64)


def _detections_in_pixels(detection_result, width: int, height: int, reduction: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [D, 4] (px of the frame, as `_mesh_faces_in_pixels`) and scores [D] of a face-detection result."""
    boxes, scores = [], []
    width, height, offset = width * reduction, height * reduction, (reduction - 1) / 2
    for detection in detection_result.detections or []:
        relative = detection.location_data.relative_bounding_box
        x0, y0 = relative.xmin * width + offset, relative.ymin * height + offset
        boxes.append((x0, y0, x0 + relative.width * width, y0 + relative.height * height))
        scores.append(detection.score[0])
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores, dtype=np.float32)


def matched_score(face_box: np.ndarray, detector_boxes: np.ndarray, detector_scores: np.ndarray) -> float:
    """Score of the detection overlapping `face_box` most, or 0.0 if none reaches SCORE_MATCH_MIN_IOU."""
    best_iou, best_score = 0.0, 0.0
    for box, score in zip(detector_boxes, detector_scores):
        iou = box_iou(face_box, box)
        if iou > best_iou:
            best_iou, best_score = iou, float(score)
    return best_score if best_iou >= SCORE_MATCH_MIN_IOU else 0.0


class _Graph:
    """A MediaPipe solution built on its first `process`, its start-up chatter on stderr dropped.

    The chatter comes from the graph's threads between the solution's construction and its first
    result, so both happen inside one `chatter_dropped` block; later calls run as they are.
    """

    def __init__(self, build: Callable[[], object]):
        self._build = build
        self._solution = None

    def process(self, image: np.ndarray):
        if self._solution is not None:
            return self._solution.process(image)
        with chatter_dropped():
            self._solution = self._build()
            return self._solution.process(image)

    def close(self) -> None:
        if self._solution is not None:
            self._solution.close()

    def __enter__(self) -> _Graph:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# MediaPipe is imported where a detector is built, so the training and export side of facepipe
# imports on a machine that only trains (a GPU box fed faces prepared elsewhere; scripts/gpu_check.py).
def _new_face_mesh(static: bool, max_faces: int) -> _Graph:
    import mediapipe as mp

    return _Graph(lambda: mp.solutions.face_mesh.FaceMesh(
        static_image_mode=static, max_num_faces=max_faces, refine_landmarks=True
    ))


def _new_face_detector() -> _Graph:
    import mediapipe as mp

    return _Graph(lambda: mp.solutions.face_detection.FaceDetection(
        model_selection=1, min_detection_confidence=DETECTOR_MIN_CONFIDENCE
    ))


def _check_image(image: np.ndarray, index: int, group: str | None) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        described = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(
            f"frame {index} (group {group!r}) is {described}; detect_landmarks needs an HxWx3 uint8 "
            "BGR image, as the frames asset stores them"
        )


def _empty_result(count: int) -> LandmarkResult:
    return LandmarkResult(
        points=np.full((count, NUM_POINTS, 3), np.nan, dtype=np.float32),
        detected=np.zeros(count, dtype=bool),
        score=np.zeros(count, dtype=np.float32),
        box=np.full((count, 4), np.nan, dtype=np.float32),
        num_faces=np.zeros(count, dtype=np.int32),
    )


def detect_landmarks(
    items: Iterable[tuple[np.ndarray, str | None]],
    max_faces: int = 4,
    progress: Callable[[int], None] | None = None,
    rgb: bool = False,
    warm_up: int = 0,
) -> LandmarkResult:
    """Landmarks, score and box of the chosen face in every frame (see the module docstring).

    `items` yields (BGR uint8 image, group) or (image, group, reduction): group is the video's id for
    video frames (frames of one video consecutive and in time order) or None for a still;
    reduction r says the image was decoded at 1/r of the frame's size (`tracking_reduction`), and
    points and boxes come back in the frame's pixels. `rgb`: the images are RGB
    already (decoded in MediaPipe's order, no conversion). `progress`, if given, is called after
    each frame with the number of frames done so far. The first `warm_up` items (frames of the
    video the next item belongs to) are only tracked by FaceMesh, not scored nor returned: see
    `detect_landmarks_in_segments`.
    """
    if max_faces < 1:
        raise ValueError(f"max_faces must be at least 1, got {max_faces}")
    points, detected, scores, boxes, face_counts, measured = [], [], [], [], [], []
    track: _Track | None = None  # the previous frame's chosen face, while a video keeps a face
    with contextlib.ExitStack() as graphs:
        detector = graphs.enter_context(_new_face_detector())
        still_mesh = None
        video_mesh, video_group = None, None
        try:
            for index, (image, group, *reduced) in enumerate(items):
                reduction = reduced[0] if reduced else 1
                _check_image(image, index, group)
                if group is None:
                    if still_mesh is None:
                        still_mesh = graphs.enter_context(_new_face_mesh(static=True, max_faces=max_faces))
                    mesh = still_mesh
                else:
                    if video_mesh is None or group != video_group:
                        if video_mesh is not None:
                            video_mesh.close()
                        # A fresh graph per video: tracking state must never cross files.
                        video_mesh, video_group = _new_face_mesh(static=False, max_faces=max_faces), group
                    mesh = video_mesh
                height, width = image.shape[:2]
                rgb_image = image if rgb else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                mesh_result = mesh.process(rgb_image)
                if index < warm_up:
                    continue
                faces = _mesh_faces_in_pixels(mesh_result, width, height, reduction)
                face_counts.append(len(faces))
                if len(faces) == 0:
                    points.append(np.full((NUM_POINTS, 3), np.nan, dtype=np.float32))
                    detected.append(False)
                    scores.append(0.0)
                    boxes.append(np.full(4, np.nan, dtype=np.float32))
                    measured.append(False)
                    track = None
                else:
                    face_boxes = np.stack([landmark_box(face) for face in faces])
                    chosen = choose_face(face_boxes, width * reduction, height * reduction)
                    carried = group is not None and track is not None and track.continues(group, face_boxes[chosen], len(faces))
                    if carried:
                        score = track.score
                    else:
                        detector_boxes, detector_scores = _detections_in_pixels(detector.process(rgb_image), width, height,
                                                                                reduction)
                        score = matched_score(face_boxes[chosen], detector_boxes, detector_scores)
                    measured.append(not carried)
                    track = _Track(group, face_boxes[chosen], len(faces), score) if group is not None else None
                    points.append(faces[chosen])
                    detected.append(True)
                    scores.append(score)
                    boxes.append(face_boxes[chosen])
                if progress is not None:
                    progress(index + 1 - warm_up)
        finally:
            if video_mesh is not None:
                video_mesh.close()
    if not detected:
        return _empty_result(0)
    return LandmarkResult(
        points=np.stack(points),
        detected=np.array(detected),
        score=np.array(scores),
        box=np.stack(boxes),
        num_faces=np.array(face_counts),
        score_measured=np.array(measured),
    )


@dataclass(frozen=True)
class _Track:
    """The chosen face of the previous video frame and the score its track was given."""

    group: str
    box: np.ndarray
    faces: int
    score: float

    def continues(self, group: str, box: np.ndarray, faces: int) -> bool:
        """Whether a frame's chosen face is this track's face (no new detector score needed):
        same video, one face as before, overlapping the previous box."""
        return (group == self.group and faces == 1 and self.faces == 1
                and box_iou(box, self.box) >= SCORE_MATCH_MIN_IOU)


# FaceMesh tracks a video one frame after the other, so one graph keeps one core busy. A long run of
# frames is cut into TRACKING_SEGMENTS consecutive segments tracked at once, each by a graph of its
# own (no shorter than MIN_SEGMENT_FRAMES, below which a graph's start-up and warm-up outweigh the
# gain: mead_w040_happy's 165 1080p frames tracked in 1.44 s as two segments against 1.82 s in one,
# median of 5 runs, both decoded at half size). A segment that starts inside a video first tracks up
# to WARM_UP_FRAMES frames before its start and drops them, so that its track is under way where its
# results begin: on the dev videos its landmarks are then within 0.26 px of one graph's, 0.02-0.04 px
# on average (up to 3.8 px at the cut without the warm-up; the JPEG frames move them 0.19 px on
# average), with the same frames detected and the same face counts.
TRACKING_SEGMENTS = 2  # the cores of the machine this is measured on
MIN_SEGMENT_FRAMES = 60
WARM_UP_FRAMES = 8


@dataclass(frozen=True)
class Segment:
    """Frames [start, end) tracked by one graph, which first tracks frames [warm_start, start)."""

    warm_start: int
    start: int
    end: int


def tracking_segments(groups: Sequence[str | None], segments: int = TRACKING_SEGMENTS) -> list[Segment]:
    """Consecutive segments of equal length covering the frames whose video groups (None for a
    still) are `groups`, each warmed up on the frames of its first frame's video before it."""
    count = len(groups)
    parts = max(1, min(segments, count // MIN_SEGMENT_FRAMES))
    starts = [part * count // parts for part in range(parts)]
    found = []
    for start, end in zip(starts, starts[1:] + [count]):
        warm_start = start
        while (start - warm_start < WARM_UP_FRAMES and warm_start > 0 and groups[start] is not None
               and groups[warm_start - 1] == groups[start]):
            warm_start -= 1
        found.append(Segment(warm_start, start, end))
    return found


def detect_landmarks_in_segments(
    segments: Sequence[Segment],
    items: Callable[[int, int], Iterable[tuple[np.ndarray, str | None]]],
    max_faces: int = 4,
    progress: Callable[[int], None] | None = None,
    rgb: bool = False,
) -> LandmarkResult:
    """`detect_landmarks` over the frames of `segments` (see `tracking_segments`), each segment in a
    thread of its own (FaceMesh releases the GIL), joined in frame order. `items(first, end)` yields
    the (image, group) items of frames [first, end). `progress` gets the frames done in all segments."""
    done = [0] * len(segments)
    reporting = threading.Lock()

    def segment_progress(number: int) -> Callable[[int], None]:
        def report(frames_done: int) -> None:
            with reporting:  # one report at a time, in the order of the counts
                done[number] = frames_done
                progress(sum(done))

        return report

    def track(numbered: tuple[int, Segment]) -> LandmarkResult:
        number, segment = numbered
        return detect_landmarks(items(segment.warm_start, segment.end), max_faces,
                                segment_progress(number) if progress else None, rgb,
                                warm_up=segment.start - segment.warm_start)

    if len(segments) == 1:
        return track((0, segments[0]))
    return LandmarkResult.concatenate(list(map_ordered(track, enumerate(segments), workers=len(segments),
                                                       depth=len(segments))))


def detect_static(image: np.ndarray, max_faces: int = 4) -> np.ndarray | None:
    """[478, 3] pixel landmarks of the chosen face in one image, or None if there is none.

    Builds a static-mode FaceMesh graph for this one call (about 10 ms on CPU), as a naive
    per-frame pipeline does; use detect_landmarks for many frames.
    """
    _check_image(image, 0, None)
    height, width = image.shape[:2]
    with _new_face_mesh(static=True, max_faces=max_faces) as mesh:
        faces = _mesh_faces_in_pixels(mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), width, height)
    if len(faces) == 0:
        return None
    return faces[choose_face(np.stack([landmark_box(face) for face in faces]), width, height)]
