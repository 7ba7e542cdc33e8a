"""Deterministic, atomic writing of the sample's stills, occluder truth and user masks."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np

from facepipe.media import replace_if_changed, temporary_path


def write_bytes(path: Path, data: bytes) -> bool:
    """Atomically write `data` to `path` unless it already holds them; returns whether it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    temporary.write_bytes(data)
    return replace_if_changed(temporary, path)


def encode_image(path: Path, image: np.ndarray) -> bytes:
    """JPEG (quality 95) or PNG bytes of a BGR image, by the extension of `path`."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path.name} as {path.suffix}")
    return encoded.tobytes()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (readable by np.load) with sorted members and fixed dates: np.savez stamps the
    current time into the zip, which would change the bytes on every build."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            array_bytes = io.BytesIO()
            np.lib.format.write_array(array_bytes, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            archive.writestr(member, array_bytes.getvalue())
    return buffer.getvalue()


def load_occluder_masks(path: Path | str) -> dict[str, np.ndarray]:
    """The ground-truth occluder masks: file name -> uint8 {0, 1} [n_frames, height, width]."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in sorted(archive.files)}


# A user labels some frames with an obstruction (white = visible face): every second occluded
# frame of the target video. XSeg's labels elsewhere are landmark hulls, which call an occluder
# "face"; these masks (and the synthetic occluders) teach it otherwise.
LABEL_EVERY_NTH_OCCLUDED = 2


def write_user_masks(masks_dir: Path, video: Path, frames: list[np.ndarray], occluders: np.ndarray, record) -> list[str]:
    """The masks such a user would draw: the face's landmark hull minus the occluder."""
    from facepipe.landmarks import detect_static

    names = []
    occluded = [i for i in range(len(frames)) if occluders[i].any()]
    for i in occluded[::LABEL_EVERY_NTH_OCCLUDED]:
        points = detect_static(frames[i])
        if points is None:
            continue
        mask = np.zeros(frames[i].shape[:2], np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points[:, :2]).astype(np.int32)), 255)
        mask[occluders[i] > 0] = 0
        path = masks_dir / f"{video.stem}_{i:06d}.png"
        record(path, write_bytes(path, encode_image(path, mask)))
        names.append(path.name)
    return names
