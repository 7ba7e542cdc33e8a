"""Face embedders: one small interface, two real models.

Every embedder takes the aligned crops the data-preparation stage stores (BGR uint8,
[N, S, S, 3], aligned to the `dfl_whole_face` template) with their five points in crop pixels
([N, 5, 2], template order: eye image-left, eye image-right, nose tip, mouth corners) and
returns one float32 row per face.

- `dlib`: dlib's ResNet face descriptor (128-d, Euclidean, same person < 0.6) with the
  pretrained weights shipped by the `face-recognition-models` package, so an offline machine
  always has a real embedder.
- `arcface`: insightface's ArcFace recognition ONNX model (512-d, cosine) from a model pack
  on disk. Nothing is downloaded.

Shaped like insightface's `model_zoo` classes: construct (cheap: locates files, raises a clear
error when they are missing), `prepare()` (loads weights), `embed()`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from facepipe.align import alignment_matrix, template_points

# The choice a config may name: "auto" or a registered embedder (a test keeps the two in step).
EmbedderChoice = Literal["auto", "arcface", "dlib"]

DEFAULT_ARCFACE_PACK = Path.home() / ".insightface" / "models" / "buffalo_l"

# Recognition models of the insightface packs, tried before scanning every .onnx by shape
# (a pack also holds detector, landmark and attribute models).
KNOWN_ARCFACE_MODEL_FILES = ("w600k_r50.onnx", "glintr100.onnx", "w600k_mbf.onnx")
ARCFACE_INPUT_SIZE = 112
ARCFACE_DIM = 512

DLIB_RECOGNITION_WEIGHTS = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE_PREDICTOR_WEIGHTS = "shape_predictor_5_face_landmarks.dat"

# Where dlib's own HOG face detector puts its box on a dfl_whole_face crop, as fractions of
# the crop size (left, top, right, bottom). Measured: `dlib.get_frontal_face_detector()` gives
# (46, 64, 201, 219) on 256 px crops of both the Grace Hopper and the astronaut photo. The
# 5-point shape predictor was trained on boxes from that detector, so we hand it the same box
# instead of running the detector again on every crop.
DLIB_BOX_IN_TEMPLATE = np.array([46.0, 64.0, 201.0, 219.0]) / 256.0


def sha256_of_files(paths: list[Path]) -> str:
    """sha256 over the files' contents in the given order (names excluded: renaming a copy
    of the same weights must not change the fingerprint)."""
    digest = hashlib.sha256()
    for path in paths:
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                file_digest.update(block)
        digest.update(file_digest.digest())
    return digest.hexdigest()


def embedding_distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Distances between rows of `a` [N, D] (or [D]) and `b` [M, D] (or [D]), as [N, M]
    (dimensions of size one dropped for 1-D inputs).

    `euclidean`: L2 distance. `cosine`: 1 - cosine similarity (rows are normalised here, so
    un-normalised inputs are fine).
    """
    a2 = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b2 = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if metric == "euclidean":
        squared = (a2 * a2).sum(1)[:, None] + (b2 * b2).sum(1)[None, :] - 2.0 * a2 @ b2.T
        distances = np.sqrt(np.maximum(squared, 0.0))
    elif metric == "cosine":
        a_unit = a2 / np.maximum(np.linalg.norm(a2, axis=1, keepdims=True), 1e-12)
        b_unit = b2 / np.maximum(np.linalg.norm(b2, axis=1, keepdims=True), 1e-12)
        distances = 1.0 - a_unit @ b_unit.T
    else:
        raise ValueError(f"unknown embedding metric {metric!r}: expected 'euclidean' or 'cosine'")
    if np.ndim(a) == 1 and np.ndim(b) == 1:
        return distances[0, 0]
    if np.ndim(a) == 1:
        return distances[0]
    if np.ndim(b) == 1:
        return distances[:, 0]
    return distances


def l2_normalise(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def check_embed_inputs(crops_bgr: np.ndarray, points5: np.ndarray) -> None:
    """Raise a clear error when crops/points do not follow the faces contract."""
    if crops_bgr.ndim != 4 or crops_bgr.shape[3] != 3 or crops_bgr.shape[1] != crops_bgr.shape[2]:
        raise ValueError(f"crops must be [N, S, S, 3] BGR, got shape {crops_bgr.shape}")
    if crops_bgr.dtype != np.uint8:
        raise ValueError(f"crops must be uint8, got {crops_bgr.dtype}")
    if points5.shape != (crops_bgr.shape[0], 5, 2):
        raise ValueError(f"points5 must be [N, 5, 2] matching {crops_bgr.shape[0]} crops, got {points5.shape}")


class FaceEmbedder(ABC):
    """Common interface. Subclasses set `name`, `dim`, `metric`, `distance_threshold` and
    implement `weight_files()`, `prepare()` and `embed_one()`."""

    name: str
    dim: int
    metric: str
    # Same-person threshold in this embedder's metric: two faces closer than this are
    # taken to be the same person.
    distance_threshold: float
    _model_hash: str | None = None

    @abstractmethod
    def weight_files(self) -> list[Path]:
        """The model file(s) whose bytes identify this embedder."""

    @property
    def model_hash(self) -> str:
        """sha256 of the weight file(s); computed once, without loading the model."""
        if self._model_hash is None:
            self._model_hash = sha256_of_files(self.weight_files())
        return self._model_hash

    def describe(self) -> dict:
        """What identifies this embedder in fingerprints and metadata (no absolute paths)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "metric": self.metric,
            "distance_threshold": self.distance_threshold,
            "model_hash": self.model_hash,
            "model_files": [path.name for path in self.weight_files()],
        }

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return embedding_distance(a, b, self.metric)

    @abstractmethod
    def prepare(self) -> FaceEmbedder:
        """Load the model (once); returns self."""

    @abstractmethod
    def embed_one(self, crop_bgr: np.ndarray, points5: np.ndarray) -> np.ndarray:
        """[D] float32 embedding of one aligned crop."""

    def embed(self, crops_bgr: np.ndarray, points5: np.ndarray) -> np.ndarray:
        """[N, D] float32 embeddings of aligned crops. Faces are embedded one at a time so
        a face's embedding never depends on which other faces share its batch."""
        crops_bgr = np.asarray(crops_bgr)
        points5 = np.asarray(points5, dtype=np.float64)
        check_embed_inputs(crops_bgr, points5)
        self.prepare()
        rows = [self.embed_one(crop, points) for crop, points in zip(crops_bgr, points5)]
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(rows).astype(np.float32)

    def embed_aligned(self, crops_bgr: np.ndarray, progress: Callable[[int, int], None] | None = None,
                      batch: int = 32) -> np.ndarray:
        """[N, D] embeddings of a stored face set's crops (aligned to the template, so the five
        points are the template's), `batch` crops read at a time from a memory map."""
        count = len(crops_bgr)
        if count == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        points5 = np.repeat(template_points(crops_bgr.shape[1])[None], min(batch, count), axis=0)
        rows = []
        for start in range(0, count, batch):
            chunk = np.asarray(crops_bgr[start:start + batch])
            rows.append(self.embed(chunk, points5[:len(chunk)]))
            if progress:
                progress(start + len(chunk), count)
        return np.concatenate(rows)


def face_recognition_models_dir() -> Path:
    """The `models/` folder of the installed face-recognition-models package.

    Found with importlib, never imported: its __init__ needs pkg_resources.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the dlib embedder needs the face-recognition-models package (pretrained dlib "
            "weights): pip install face-recognition-models, or choose embedder='arcface'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def dlib_face_box(points5: np.ndarray) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box dlib's detector would give this face.

    The box measured on dfl_whole_face crops is carried to the face through the similarity
    that maps the template onto its five points (identity for an aligned crop).
    """
    to_template = alignment_matrix(points5, 1)
    to_face = cv2.invertAffineTransform(to_template)
    scale = float(np.sqrt(abs(np.linalg.det(to_face[:, :2]))))
    box = DLIB_BOX_IN_TEMPLATE
    centre_template = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    centre = to_face[:, :2] @ centre_template + to_face[:, 2]
    half_width = (box[2] - box[0]) / 2 * scale
    half_height = (box[3] - box[1]) / 2 * scale
    return (
        round(centre[0] - half_width),
        round(centre[1] - half_height),
        round(centre[0] + half_width),
        round(centre[1] + half_height),
    )


class DlibEmbedder(FaceEmbedder):
    """dlib ResNet face descriptor, 128-d, Euclidean distance, same person < 0.6."""

    name = "dlib"
    dim = 128
    metric = "euclidean"
    # dlib's documented threshold (LFW 99.38 % at 0.6); measured here: same person
    # 0.2-0.35, Hopper vs astronaut about 0.7.
    distance_threshold = 0.6

    def __init__(self, models_dir: Path | None = None):
        self.models_dir = Path(models_dir) if models_dir is not None else face_recognition_models_dir()
        for path in self.weight_files():
            if not path.is_file():
                raise FileNotFoundError(
                    f"dlib weights missing: {path}; reinstall face-recognition-models or choose embedder='arcface'"
                )
        self._shape_predictor = None
        self._recognizer = None

    def weight_files(self) -> list[Path]:
        return [self.models_dir / DLIB_RECOGNITION_WEIGHTS, self.models_dir / DLIB_SHAPE_PREDICTOR_WEIGHTS]

    def prepare(self) -> DlibEmbedder:
        if self._recognizer is None:
            import dlib

            self._shape_predictor = dlib.shape_predictor(str(self.models_dir / DLIB_SHAPE_PREDICTOR_WEIGHTS))
            self._recognizer = dlib.face_recognition_model_v1(str(self.models_dir / DLIB_RECOGNITION_WEIGHTS))
        return self

    def embed_one(self, crop_bgr: np.ndarray, points5: np.ndarray) -> np.ndarray:
        import dlib

        rgb = np.ascontiguousarray(crop_bgr[:, :, ::-1])
        shape = self._shape_predictor(rgb, dlib.rectangle(*dlib_face_box(points5)))
        # num_jitters=0: jittering draws random crops and would break determinism.
        descriptor = self._recognizer.compute_face_descriptor(rgb, shape, num_jitters=0)
        return np.asarray(descriptor, dtype=np.float32)


def onnx_io_shapes(model_path: Path) -> tuple[list, list]:
    """Shapes of the graph's real inputs and its outputs, dynamic dimensions as None."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def dims(value_info) -> list:
        return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]

    inputs = [dims(v) for v in model.graph.input if v.name not in initializers]
    outputs = [dims(v) for v in model.graph.output]
    return inputs, outputs


def has_arcface_shape(model_path: Path) -> bool:
    """One input [N, 3, 112, 112] and one output [N, 512]."""
    from google.protobuf.message import DecodeError

    try:
        inputs, outputs = onnx_io_shapes(model_path)
    except (OSError, DecodeError):  # not an ONNX file we can read: not a recognition model either
        return False
    return (
        len(inputs) == 1
        and len(outputs) == 1
        and inputs[0][1:] == [3, ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE]
        and outputs[0][1:] == [ARCFACE_DIM]
    )


def find_arcface_model(pack_dir: Path) -> Path | None:
    """The recognition model of an insightface pack: a known file name, else the first .onnx
    (sorted by name) with ArcFace's input/output shapes. None when there is none."""
    if not pack_dir.is_dir():
        return None
    for name in KNOWN_ARCFACE_MODEL_FILES:
        if (pack_dir / name).is_file():
            return pack_dir / name
    for path in sorted(pack_dir.glob("*.onnx")):
        if has_arcface_shape(path):
            return path
    return None


def arcface_input_normalisation(model_path: Path) -> tuple[float, float]:
    """(mean, std) insightface applies before this model, following its ArcFaceONNX rule:
    models converted from mxnet subtract and scale inside the graph (a Sub and a Mul among
    the first nodes) and take raw pixels; the others take (x - 127.5) / 127.5."""
    import onnx

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node[:8]
    has_sub = any(node.name.startswith(("Sub", "_minus")) for node in nodes)
    has_mul = any(node.name.startswith(("Mul", "_mul")) for node in nodes)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


class ArcFaceEmbedder(FaceEmbedder):
    """insightface ArcFace ONNX (512-d, L2-normalised rows, cosine distance) run with
    onnxruntime on the CPU provider. Faces are re-aligned from the five points to ArcFace's
    112 template with insightface's own `norm_crop`, RGB, NCHW, as insightface does."""

    name = "arcface"
    dim = ARCFACE_DIM
    metric = "cosine"
    # Cosine distance (1 - similarity). insightface's verification practice treats
    # similarity above about 0.3 as the same person with its recognition packs.
    distance_threshold = 0.7

    def __init__(self, pack_dir: Path | None = None, intra_op_threads: int = 0):
        self.pack_dir = Path(pack_dir).expanduser() if pack_dir is not None else DEFAULT_ARCFACE_PACK
        model_path = find_arcface_model(self.pack_dir)
        if model_path is None:
            what = "does not exist" if not self.pack_dir.is_dir() else "holds no ArcFace recognition model"
            raise FileNotFoundError(
                f"ArcFace model pack {self.pack_dir} {what} (expected e.g. w600k_r50.onnx, or any .onnx "
                f"with input [N,3,112,112] and output [N,512]). Nothing is downloaded: copy an insightface "
                f"pack such as buffalo_l there, set the `arcface_pack` option to the folder that holds "
                f"one, or choose embedder='dlib'."
            )
        self.model_path = model_path
        self.intra_op_threads = intra_op_threads
        self._session = None

    def weight_files(self) -> list[Path]:
        return [self.model_path]

    def prepare(self) -> ArcFaceEmbedder:
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.intra_op_threads
            options.log_severity_level = 3
            self._session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._input_name = self._session.get_inputs()[0].name
            self.input_mean, self.input_std = arcface_input_normalisation(self.model_path)
        return self

    def arcface_crop(self, crop_bgr: np.ndarray, points5: np.ndarray) -> np.ndarray:
        """The 112x112 BGR crop ArcFace sees (insightface's norm_crop)."""
        from insightface.utils import face_align

        with warnings.catch_warnings():
            # insightface calls skimage's deprecated SimilarityTransform.estimate on every face.
            warnings.simplefilter("ignore", FutureWarning)
            return face_align.norm_crop(
                crop_bgr, landmark=np.asarray(points5, dtype=np.float32), image_size=ARCFACE_INPUT_SIZE
            )

    def input_blob(self, arcface_crop_bgr: np.ndarray) -> np.ndarray:
        """[1, 3, 112, 112] float32, RGB, (x - mean) / std: insightface's get_feat blob."""
        blob = cv2.dnn.blobFromImage(
            arcface_crop_bgr,
            1.0 / self.input_std,
            (ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE),
            (self.input_mean, self.input_mean, self.input_mean),
            swapRB=True,
        )
        return np.ascontiguousarray(blob, dtype=np.float32)

    def embed_one(self, crop_bgr: np.ndarray, points5: np.ndarray) -> np.ndarray:
        blob = self.input_blob(self.arcface_crop(crop_bgr, points5))
        output = self._session.run(None, {self._input_name: blob})[0].reshape(-1)
        return l2_normalise(output).astype(np.float32)


def arcface_pack_available(pack_dir: Path | None = None) -> bool:
    return find_arcface_model(Path(pack_dir).expanduser() if pack_dir is not None else DEFAULT_ARCFACE_PACK) is not None


# name -> factory(arcface_pack): adding an embedder is its class, one entry here and its name in EmbedderChoice.
EMBEDDERS: dict[str, Callable[[Path | None], FaceEmbedder]] = {
    "arcface": lambda pack: ArcFaceEmbedder(pack),
    "dlib": lambda pack: DlibEmbedder(),
}


def get_embedder(name: str = "auto", arcface_pack: Path | str | None = None) -> FaceEmbedder:
    """The embedder for a config choice. `auto` is ArcFace when the pack holds a recognition
    model and dlib otherwise; the caller must log `embedder.name` loudly and put
    `embedder.describe()` into the fingerprint, since auto's choice depends on the machine."""
    pack = Path(arcface_pack).expanduser() if arcface_pack else None
    if name == "auto":
        name = "arcface" if arcface_pack_available(pack) else "dlib"
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}: choose one of {', '.join(get_args(EmbedderChoice))}")
    return EMBEDDERS[name](pack)


def embedder_of_profile(profile: dict, profile_config: dict) -> FaceEmbedder:
    """The very embedder a profile was built with: its recorded name, with the ArcFace pack from
    the config that built it; refuses a different model file (another pack, another machine)."""
    embedder = get_embedder(profile["embedder"], profile_config.get("arcface_pack") or None)
    found = embedder.describe()["model_hash"]
    if found != profile["embedder_model_hash"]:
        raise ValueError(
            f"the identity profile was built with {profile['embedder']} model {profile['embedder_model_hash'][:12]}, "
            f"but this machine's {embedder.name} model is {found[:12]}: materialize identity_profile again here"
        )
    return embedder
