"""Contact sheets: small image grids shown as materialization metadata."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def contact_sheet(images: list[np.ndarray], columns: int = 8, thumb: int = 96) -> np.ndarray:
    """Tile BGR (or grey) images into one BGR grid of `thumb`-sized cells."""
    if not images:
        raise ValueError("contact sheet needs at least one image")
    cells = []
    for image in images:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        cells.append(cv2.resize(image, (thumb, thumb), interpolation=cv2.INTER_AREA))
    rows = -(-len(cells) // columns)
    sheet = np.zeros((rows * thumb, min(columns, len(cells)) * thumb, 3), dtype=np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        sheet[r * thumb : (r + 1) * thumb, c * thumb : (c + 1) * thumb] = cell
    return sheet


def evenly_spaced(count: int, limit: int) -> np.ndarray:
    """Up to `limit` indices spread over range(count), for previews of long sequences."""
    return np.unique(np.linspace(0, count - 1, num=min(count, limit)).round().astype(int)) if count else np.array([], int)


def outline(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    """The image with the mask's outline drawn on it."""
    contours, _ = cv2.findContours((mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    drawn = image.copy()
    cv2.drawContours(drawn, contours, -1, colour, max(1, image.shape[0] // 128))
    return drawn


def labelled(image: np.ndarray, lines: list[str], scale: float = 0.4) -> np.ndarray:
    """A copy of a BGR image with short lines of text at its top left, white on a dark outline,
    readable on any face."""
    drawn = image.copy()
    for n, text in enumerate(lines):
        origin = (4, int(14 * (n + 1) * scale / 0.4))
        cv2.putText(drawn, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(drawn, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return drawn


def write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def blend(face: np.ndarray, mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """`face` over `background` (same size) through a uint8 mask: what a runtime pastes. The
    model's output outside its mask is never shown to anyone, so previews don't show it either."""
    alpha = mask[..., None].astype(np.float32) / 255
    return np.round(face * alpha + background * (1 - alpha)).astype(np.uint8)


def paste_face(frame: np.ndarray, crop: np.ndarray, mask: np.ndarray, matrix: np.ndarray, crop_space: int) -> np.ndarray:
    """Blend an aligned crop back into its frame through the inverse of the alignment.

    `matrix` maps frame pixels to a crop of `crop_space` px (the stored faces' size); `crop` and
    `mask` may be at another size (the model's) and are scaled to match. The mask is feathered
    so the seam does not show.
    """
    size = crop.shape[0]
    to_crop = np.asarray(matrix, dtype=np.float64).reshape(2, 3) * (size / crop_space)
    back = cv2.invertAffineTransform(to_crop)
    height, width = frame.shape[:2]
    face = cv2.warpAffine(crop, back, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    soft = cv2.GaussianBlur(mask, (0, 0), max(1.0, size / 48))
    alpha = cv2.warpAffine(soft, back, (width, height), flags=cv2.INTER_LINEAR)[..., None].astype(np.float32) / 255
    return np.round(face * alpha + frame * (1 - alpha)).astype(np.uint8)
