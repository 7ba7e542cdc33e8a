"""Media files: listing and hashing a partition folder, loading images, sampling video frames,
writing videos deterministically.

Stored frames are JPEG at quality 95 (`FRAME_EXTENSION`, `FRAME_ENCODING`), chosen by
benchmarks/frame_format.py on the six dev videos (150 frames each, 410x412 to 1920x1080): against
lossless PNG it encodes 14x and decodes 7x faster at a quarter of the size, and FaceMesh on the
stored frames finds a face in exactly the same frames, with the same face counts, its landmarks
0.19 px from those on the lossless frames on average (0.06 % of the face's height; at most
1.7 px, 0.5 %). Quality 100 halves that difference at twice the size and three times the
decoding time. libjpeg-turbo is inside the pinned OpenCV wheel, so the same frame gives the same
bytes on every rebuild.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pandas as pd

from facepipe.disk import NO_SPACE, NoSpace, free_bytes
from facepipe.pipelining import depth_for, map_ordered, prefetch
from facepipe.store import canonical_json, file_sha256

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Names inside a partition folder that hold other inputs, not media: user masks for XSeg and the
# user's curation.toml (facepipe.curation_file.CURATION_FILE) and the partition's settings.toml
# (facepipe.partition_settings.SETTINGS_FILE).
RESERVED_NAMES = ("masks", "curation.toml", "settings.toml")
MIN_IMAGE_SIDE = 32
MAX_IMAGE_PIXELS = 64_000_000  # 9248x6936 (a 64 MP photo); decoding more costs GBs for no usable face
FRAME_EXTENSION = ".jpg"
FRAME_ENCODING = [cv2.IMWRITE_JPEG_QUALITY, 95]  # see the module docstring
# OpenCV's FFmpeg reader seeks to frame n by jumping to the keyframe at or before n - 16 and
# decoding forward (cap_ffmpeg_impl.hpp, CvCapture_FFMPEG::seek): what a seek costs.
OPENCV_SEEK_LEAD = 16


class MediaError(ValueError):
    """A media file that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class MediaFile:
    rel: str  # POSIX path relative to the partition folder
    path: Path
    kind: str  # "video" | "image"
    size: int
    sha256: str


@dataclass(frozen=True)
class Skipped:
    rel: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rel}: {self.reason}"


def media_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return None


def candidate_paths(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, path) of every file a partition folder offers as media, sorted.

    Hidden files and the reserved names (user masks, curation.toml) are not media and are not listed.
    """
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        rel = path.relative_to(folder)
        if rel.parts[0] in RESERVED_NAMES or any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        yield rel.as_posix(), path


def scan_media(folder: Path) -> tuple[list[MediaFile], list[Skipped]]:
    """Media files under `folder` sorted by relative path, and everything else with a reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(f"media folder {folder} does not exist: create it and put videos or images in it")
    files, skipped = [], []
    for rel, path in candidate_paths(folder):
        if reason := link_problem(path, folder):
            skipped.append(Skipped(rel, reason))
            continue
        kind = media_kind(path)
        if kind is None:
            supported = ", ".join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)
            skipped.append(Skipped(rel, f"not a media file (supported: {supported})"))
            continue
        try:
            size = path.stat().st_size
            digest = file_sha256(path) if size else ""
        except PermissionError as error:
            skipped.append(Skipped(rel, f"cannot read it ({error.strerror}): give yourself read access (chmod u+r)"))
            continue
        if size == 0:
            skipped.append(Skipped(rel, "empty file (0 bytes): re-copy it"))
            continue
        files.append(MediaFile(rel, path, kind, size, digest))
    return files, skipped


def link_problem(path: Path, folder: Path) -> str | None:
    """Why a symbolic link in a media folder cannot be used (a loop, a missing or an outside
    target), or None for a usable link or a plain file."""
    if not path.is_symlink():
        return None
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 reports a loop this way; later versions raise OSError(ELOOP)
        return "symbolic link loop (it leads back to itself): remove it"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop (it leads back to itself): remove it"
        return f"symbolic link to {os.readlink(path)}, which does not exist: remove the link or copy the file in"
    if not target.is_relative_to(folder.resolve()):
        return "symbolic link pointing outside the folder; copy the file in instead"
    return None


def folder_signature(folder: Path) -> str:
    """A cheap change detector (names, sizes, mtimes; no reading) for sensors polling often.
    Covers user masks too, since they are inputs of the target's XSeg model."""
    listing = [[p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
               for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return hashlib.sha256(canonical_json(listing)).hexdigest()


def media_hash(files: list[MediaFile]) -> str:
    """Content hash of a media set: changes when any file is added, removed, renamed or edited."""
    listing = [[f.rel, f.sha256] for f in files]
    return hashlib.sha256(canonical_json(listing)).hexdigest()


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (grey, BGRA, 16-bit) as 3-channel uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image's header, nothing decoded; None where Pillow cannot tell
    (OpenCV's decoder then has its say). A header beyond Pillow's own bomb limit is MediaError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as header:
                return header.size
    except Image.DecompressionBombError as error:
        raise MediaError(too_large(path, f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels")) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def too_large(path: Path, size: str) -> str:
    return (f"{path.name}: {size}, more than facepipe decodes (at most {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels): "
            "scale it down (a face needs far fewer pixels) and put it back")


def load_image(path: Path) -> np.ndarray:
    """Decode an image file as uint8 BGR (EXIF orientation applied), or raise MediaError.
    Its size is checked from the header first: a small file can claim gigapixels."""
    size = image_size(path)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise MediaError(too_large(path, f"{size[0]}x{size[1]} px ({size[0] * size[1] / 1e6:.0f} megapixels)"))
    data = np.fromfile(str(path), dtype=np.uint8)  # also works for non-ASCII names
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if data.size else None
    if image is None:
        raise MediaError(f"{path.name}: cannot decode this image (corrupt or not really an image); replace or remove it")
    image = to_bgr8(image)
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise MediaError(
            f"{path.name}: image is {image.shape[1]}x{image.shape[0]} px, too small to hold a usable face "
            f"(at least {MIN_IMAGE_SIDE} px per side); use a larger image"
        )
    return image


@dataclass(frozen=True)
class Source:
    """A decodable media file and how many frames it yields."""

    file: MediaFile
    frame_count: int
    fps: float


def probe(file: MediaFile) -> Source:
    """Open a file once to learn its frame count, or raise MediaError naming the problem."""
    if file.kind == "image":
        load_image(file.path)
        return Source(file, 1, 0.0)
    capture = cv2.VideoCapture(str(file.path))
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok or frame is None:
            raise MediaError(f"{file.rel}: cannot decode this video (corrupt, truncated or unsupported codec); re-export it as H.264 mp4")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or 25.0
    finally:
        capture.release()
    return Source(file, max(count, 1), fps)


MEDIA_LISTING = "media.json"


def write_sources(path: Path, sources: list[Source], digest: str) -> None:
    listing = [
        {"rel": s.file.rel, "kind": s.file.kind, "size": s.file.size, "sha256": s.file.sha256,
         "frame_count": s.frame_count, "fps": s.fps}
        for s in sources
    ]
    path.write_text(json.dumps({"files": listing, "hash": digest}, indent=2, sort_keys=True))


def read_sources(path: Path, folder: Path) -> list[Source]:
    """The sources a media listing recorded, checked against the files now in `folder`."""
    sources = []
    for item in json.loads(path.read_text())["files"]:
        file = MediaFile(item["rel"], folder / item["rel"], item["kind"], item["size"], item["sha256"])
        if not file.path.is_file() or file.path.stat().st_size != file.size:
            raise MediaError(f"{file.path} changed or vanished since the media asset ran: materialize media again")
        sources.append(Source(file, item["frame_count"], item["fps"]))
    return sources


def sample_positions(total: int, max_frames: int) -> np.ndarray:
    """Exactly min(total, max_frames) positions spread uniformly over [0, total).

    The stride total/max_frames is > 1 whenever we sample, so flooring never repeats a position
    and the cap is exact (unlike `step = total // max`, which keeps up to twice as many).
    """
    if max_frames < 1:
        raise ValueError("max_frames must be at least 1")
    if total <= max_frames:
        return np.arange(total, dtype=np.int64)
    return np.floor(np.arange(max_frames, dtype=np.float64) * (total / max_frames)).astype(np.int64)


def decode_video(path: Path) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


@dataclass(frozen=True)
class VideoIndex:
    """What one demuxing pass over a video tells (no frame decoded): its packets, the display
    positions of its keyframes, and whether its timestamps are a constant frame rate."""

    packets: int
    keyframes: np.ndarray  # sorted display positions (frame indices) of the keyframes
    constant_rate: bool


def index_video(path: Path, fps: float) -> VideoIndex | None:
    """The video's index from OpenCV's raw-packet mode, or None where that mode is unavailable."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    try:
        if not capture.isOpened() or capture.get(cv2.CAP_PROP_FORMAT) != -1:
            return None
        milliseconds, key = [], []
        while capture.grab():
            milliseconds.append(capture.get(cv2.CAP_PROP_POS_MSEC))
            key.append(bool(capture.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME)))
    finally:
        capture.release()
    positions = np.asarray(milliseconds, dtype=np.float64) * fps / 1000.0
    constant = bool(len(positions)) and bool(np.allclose(np.sort(positions), np.arange(len(positions)), atol=0.02))
    keyframes = np.sort(np.round(positions[np.asarray(key, dtype=bool)]).astype(np.int64)) if len(key) else np.zeros(0, np.int64)
    return VideoIndex(len(positions), keyframes, constant)


@dataclass
class Decoding:
    """What reading one video did: decodable frames (known once the reading ends), frames the
    decoder produced (including those a seek decodes on its way) and seeks."""

    frame_count: int = 0
    decoded: int = 0
    seeks: int = 0


class VideoFrames:
    """The wanted frames of a video, in order, decoding no more than it must.

    Frames between two wanted ones are grabbed (decoded, not converted to BGR) unless a seek is
    cheaper: where the video's timestamps are a constant frame rate and its packets match its
    header (so OpenCV's frame-number seek lands exactly), a seek costs decoding from the keyframe
    OpenCV jumps to, and it is taken when that keyframe lies beyond the current position. The
    decodable frame count is checked either way (the last frame decodes, the next does not), so a
    header that overstates a truncated file is caught as before; `decoding` holds the result.
    """

    def __init__(self, path: Path, header_count: int, fps: float, decoding: Decoding) -> None:
        self.path, self.header_count, self.decoding = path, header_count, decoding
        self.index = index_video(path, fps)
        index = self.index
        self.seekable = (index is not None and index.constant_rate and index.packets == header_count
                         and len(index.keyframes) > 0 and index.keyframes[0] == 0)

    def seek_landing(self, target: int) -> int:
        """The keyframe OpenCV's seek to `target` starts decoding from."""
        keyframes = self.index.keyframes
        return int(keyframes[np.searchsorted(keyframes, max(target - OPENCV_SEEK_LEAD, 0), side="right") - 1])

    def _advance(self, capture, target: int) -> bool:
        """Grab frame `target` (the next grab returns frame `self.position`); False where the
        file ends first."""
        if self.seekable and target > self.position and self.seek_landing(target) > self.position:
            capture.set(cv2.CAP_PROP_POS_FRAMES, target)
            self.decoding.seeks += 1
            self.decoding.decoded += target - self.seek_landing(target)
            self.position = target
        while self.position <= target:
            if not capture.grab():
                return False
            self.decoding.decoded += 1
            self.position += 1
        return True

    def read(self, wanted: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        capture = cv2.VideoCapture(str(self.path))
        self.position = 0
        try:
            for target in wanted.tolist():
                if not self._advance(capture, target):
                    break
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    self.position -= 1  # frame `target` does not decode after all
                    break
                yield target, frame
            else:
                if self.seekable:
                    last = self.header_count - 1
                    if (self.position > last or self._advance(capture, last)) and not capture.grab():
                        self.decoding.frame_count = self.header_count
                        return
                else:  # count what decodes, to the end
                    while capture.grab():
                        self.decoding.decoded += 1
                        self.position += 1
                    self.decoding.frame_count = self.position
                    return
        finally:
            capture.release()
        # The file ended before a wanted frame (or the header is wrong): sequentially, what was
        # grabbed is the count; after a seek it has to be counted from the start.
        self.decoding.frame_count = count_decodable(self.path) if self.decoding.seeks or self.seekable else self.position


def count_decodable(path: Path) -> int:
    """Frames a video really decodes (every one grabbed)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    try:
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count


def frame_plan(sources: list[Source], max_frames: int) -> list[np.ndarray]:
    """Per source, the sorted frame indices to keep, from one uniform sampling of the whole set."""
    counts = np.array([s.frame_count for s in sources], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    picks = sample_positions(int(counts.sum()), max_frames)
    return [picks[(picks >= a) & (picks < a + n)] - a for a, n in zip(starts, counts)]


def extract_frames(
    sources: list[Source],
    max_frames: int,
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    decodings: dict[str, Decoding] | None = None,
) -> pd.DataFrame:
    """Write the sampled frames as JPEG files into `out_dir` and return the manifest table.

    A background thread decodes while two others encode and write (the store's commit fsyncs them);
    the manifest keeps frame order. Container
    headers can overstate a video's frame count (truncated files); when decoding disagrees we
    re-plan with the true counts, so the cap stays exact and uniform. `decodings`, if given,
    receives what reading each video did (frames decoded, seeks).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(2):
        plan = frame_plan(sources, max_frames)
        total = int(sum(len(p) for p in plan))
        rows, corrected = [], []
        for source, wanted in zip(sources, plan):
            rows_before = len(rows)
            decoding = Decoding()
            frame_bytes = video_frame_bytes(source.file.path) if source.file.kind == "video" else 0
            decoded = prefetch(source_frames(source, wanted, decoding), depth=depth_for(frame_bytes, 4))
            numbered = ((rows_before + i, index, frame) for i, (index, frame) in enumerate(decoded))
            for row in map_ordered(lambda item: write_frame(out_dir, *item, source, total), numbered, workers=2,
                                   depth=depth_for(frame_bytes, 8)):
                rows.append(row)
                if progress and (len(rows) % 50 == 0 or len(rows) == total):
                    progress(len(rows), total)
            stride = int(np.ceil(source.frame_count / max(len(wanted), 1)))
            for row in rows[rows_before:]:
                row["stride"] = max(stride, 1)
            if decodings is not None and source.file.kind == "video":
                decodings[source.file.rel] = decoding
            if source.file.kind == "video" and decoding.frame_count != source.frame_count:
                corrected.append(Source(source.file, decoding.frame_count, source.fps))
                if warn:
                    warn(f"{source.file.rel}: header says {source.frame_count} frames, {decoding.frame_count} decodable; "
                         "re-planning the sample")
            else:
                corrected.append(source)
        if corrected == sources:
            break
        for stored in out_dir.glob(f"*{FRAME_EXTENSION}"):
            stored.unlink()
        sources = [s for s in corrected if s.frame_count > 0]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


MANIFEST_COLUMNS = [
    "frame_id", "file", "source", "kind", "source_frame_index", "timestamp_s", "width", "height", "stride",
]


def video_frame_bytes(path: Path) -> int:
    """Bytes of one decoded BGR frame of a video, from its header."""
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) * int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) * 3
    finally:
        capture.release()


def source_frames(source: Source, wanted: np.ndarray, decoding: Decoding) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, BGR frame) of the wanted frames of one source; for a video, `decoding`
    holds what the reading did once the iteration ends."""
    if source.file.kind == "image":
        if len(wanted):
            yield 0, load_image(source.file.path)
        return
    yield from VideoFrames(source.file.path, source.frame_count, source.fps, decoding).read(wanted)


def write_frame(out_dir: Path, frame_id: int, index: int, frame: np.ndarray, source: Source, total: int) -> dict:
    """Store one frame as `<frame_id>.jpg`, on disk when this returns; its manifest row (without the stride)."""
    name = f"{frame_id:06d}{FRAME_EXTENSION}"
    write_frame_file(out_dir / name, frame, frames_left=total - frame_id)
    return {
        "frame_id": frame_id,
        "file": name,
        "source": source.file.rel,
        "kind": source.file.kind,
        "source_frame_index": index,
        "timestamp_s": round(index / source.fps, 6) if source.file.kind == "video" else 0.0,
        "width": int(frame.shape[1]),
        "height": int(frame.shape[0]),
    }


def write_frame_file(path: Path, frame: np.ndarray, frames_left: int = 1) -> None:
    """Encode in memory and write with Python's I/O (the same bytes as cv2.imwrite), so that a
    failed write says why: a full disk is NoSpace with an estimate of what the frames still need.
    Not fsynced here: the store's commit fsyncs the whole folder from a pool of threads (all the
    frames of a 1080p video in ~0.05 s), where one fsync per frame in the writer cost ~4 ms of the
    writer's time, as long as encoding the frame, and the commit fsynced every file again."""
    ok, encoded = cv2.imencode(FRAME_EXTENSION, frame, FRAME_ENCODING)
    if not ok:
        raise MediaError(f"{path.name}: OpenCV could not encode a {frame.shape[1]}x{frame.shape[0]} frame as {FRAME_EXTENSION}")
    try:
        with open(path, "wb") as handle:
            handle.write(encoded.tobytes())
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        path.unlink(missing_ok=True)
        raise NoSpace(path.parent, len(encoded) * frames_left, free_bytes(path.parent)) from error


# libjpeg's DCT scaling: a JPEG decoded at 1/2, 1/4 or 1/8 of its size costs a fraction of a full decode.
REDUCED_READS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


def read_frame(path: Path, rgb: bool = False, *, reduction: int = 1) -> np.ndarray:
    """One stored frame as BGR (or, decoded straight into that order, RGB) uint8, or MediaError naming it.
    `reduction` (1, 2, 4 or 8): decoded at 1/reduction of its width and height (REDUCED_READS)."""
    image = cv2.imread(str(path), REDUCED_READS[reduction] | (cv2.IMREAD_COLOR_RGB if rgb else 0))
    if image is None:
        raise MediaError(f"stored frame {path} is unreadable: re-materialize the frames asset")
    return image


def frame_groups(manifest: pd.DataFrame) -> list[str | None]:
    """Per frame, the video it belongs to (its source), or None for a still: what FaceMesh tracks along."""
    return [row.source if row.kind == "video" else None for row in manifest.itertuples(index=False)]


def read_frames(frames_dir: Path, manifest: pd.DataFrame, rgb: bool = False, workers: int = 2,
                reduction: Callable[[int, int], int] | None = None) -> Iterator[tuple[np.ndarray, str | None, int]]:
    """(BGR or RGB frame, video group or None for stills, reduction) in manifest order, for the
    landmark stage: each frame decoded at 1/`reduction(width, height)` of its size (1 without it),
    by `workers` threads ahead of the caller (as many ahead as fit IN_FLIGHT_BYTES at the largest
    frame's size)."""
    largest = int((manifest.width * manifest.height).max()) * 3 if len(manifest) else 0
    reductions = [reduction(width, height) if reduction else 1 for width, height in zip(manifest.width, manifest.height)]
    images = map_ordered(lambda named: read_frame(frames_dir / named[0], rgb, reduction=named[1]),
                         list(zip(manifest.file.tolist(), reductions)), workers=workers, depth=depth_for(largest, 8))
    return zip(images, frame_groups(manifest), reductions)


def replace_if_changed(temporary: Path, final: Path) -> bool:
    """Move a finished temporary file over `final` unless `final` already has the same bytes.

    Returns whether `final` was (re)written. Unchanged files keep their modification time.
    """
    same_size = final.is_file() and final.stat().st_size == temporary.stat().st_size
    if same_size and final.read_bytes() == temporary.read_bytes():
        temporary.unlink()
        return False
    try:
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)  # only still there if the replace failed
    return True


def temporary_path(final: Path) -> Path:
    """A hidden temporary name beside `final`, keeping its extension (FFmpeg picks the container
    from it); hidden so folder scans never take a half-written file for media."""
    return final.with_name(f".{final.stem}.tmp{os.getpid()}{final.suffix}")


def write_bytes(path: Path, data: bytes) -> bool:
    """Atomically write `data` to `path` unless it already holds them; returns whether it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    temporary.write_bytes(data)
    return replace_if_changed(temporary, path)


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> bool:
    """Atomically write BGR frames as an 'mp4v' MP4 unless the file already holds the same bytes.

    OpenCV's FFmpeg writer leaves the encoder single-threaded and writes no creation time, so the
    same frames give the same bytes.
    """
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    temporary = temporary_path(path)
    writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        temporary.unlink(missing_ok=True)
        raise RuntimeError(
            f"OpenCV cannot open an 'mp4v' video writer for {temporary}: "
            "this opencv build lacks FFmpeg video I/O; install the opencv-python wheel from constraints.txt"
        )
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return replace_if_changed(temporary, path)
