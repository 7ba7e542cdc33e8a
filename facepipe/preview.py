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


def colour_transfer(face: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``face`` recoloured to ``reference``'s light (Reinhard et al. 2001, DeepFaceLab's "rct"):
    each L*a*b* channel shifted and scaled to the reference's mean and standard deviation, both
    measured inside ``mask`` (uint8, same size), so a swap trained under other light stops
    showing as a colour cast on the target. Returns ``face`` unchanged when the mask is empty."""
    weight = mask.astype(np.float32) / 255
    if weight.sum() < 1:
        return face
    lab = cv2.cvtColor(face, cv2.COLOR_BGR2LAB).astype(np.float32)
    reference_lab = cv2.cvtColor(reference, cv2.COLOR_BGR2LAB).astype(np.float32)

    def stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = np.average(image.reshape(-1, 3), axis=0, weights=weight.ravel())
        variance = np.average((image.reshape(-1, 3) - mean) ** 2, axis=0, weights=weight.ravel())
        return mean, np.sqrt(variance)

    mean, std = stats(lab)
    reference_mean, reference_std = stats(reference_lab)
    moved = (lab - mean) * (reference_std / np.maximum(std, 1e-3)) + reference_mean
    return cv2.cvtColor(np.clip(moved, 0, 255).round().astype(np.uint8), cv2.COLOR_LAB2BGR)


def side_by_side(left: np.ndarray, right: np.ndarray, max_height: int = 360) -> np.ndarray:
    """Two frames of the same size next to each other, scaled down to at most ``max_height``."""
    both = np.hstack([left, right])
    scale = min(1.0, max_height / both.shape[0])
    if scale < 1:
        size = (int(round(both.shape[1] * scale)) // 2 * 2, int(round(both.shape[0] * scale)) // 2 * 2)
        both = cv2.resize(both, size, interpolation=cv2.INTER_AREA)
    return both


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
