"""Synthetic occlusion and paired augmentation for XSeg training.

A landmark hull says where the face is, not what covers it, so a model trained on hulls alone
paints hands and microphones as face. During training we paste synthetic occluders over the
aligned crop and remove them from the label, so the model has to learn what covers a face.

Occluder shapes (``SHAPES``), built in a unit frame, then rotated, scaled and placed:
- ``blob``: a random polygon (5-10 vertices, irregular radii), sharp or rounded;
- ``hand``: a palm ellipse with four finger bars and a thumb, some fingers bent short;
- ``bar``: a long stick (microphone stand, pen, glasses arm), sometimes thin, sometimes with a
  round head at one end (a hand-held microphone).

Textures (never a flat colour):
- ``background``: a patch from a non-face region of this crop or of a donor crop (outside the
  face label, dilated so that hair and the hull's edge stay out), mirror-tiled over the canvas;
- ``noise``: smooth value noise around a random colour;
- ``skin``: the same noise around the face's own median colour, because real hands are
  skin-coloured and the model must learn shape and edges, not "not skin = occluder".
Every texture is then lit by a random linear gradient and given a fine grain.

Placement: the occluder is anchored on a random face pixel and its scale is solved (bisection)
so that it covers a random share of the face's pixels between ``MIN_FACE_COVERAGE`` and
``MAX_FACE_COVERAGE``; its edge is blurred by a random Gaussian (sigma 0 to
``MAX_EDGE_SIGMA`` px). The label loses exactly the pixels where the occluder's alpha is >= 0.5
(the returned occluder mask). If the face has fewer than ``MIN_FACE_PIXELS`` pixels, or no
shape fits the bounds in ``PLACEMENT_ATTEMPTS`` draws, nothing is pasted.

Masks are uint8 {0, 255} [S, S] (non-zero input = face), crops uint8 BGR [S, S, 3].
All randomness comes from the numpy ``Generator`` passed in: the same generator state gives the
same output. ``rng_from_torch`` derives one from the training engine's torch generator.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

SHAPES = ("blob", "hand", "bar")
TEXTURES = ("background", "noise", "skin")
# Texture choice per shape: hands are mostly skin-toned, other objects mostly not.
TEXTURE_WEIGHTS = {
    "blob": (0.5, 0.35, 0.15),
    "hand": (0.25, 0.15, 0.6),
    "bar": (0.5, 0.35, 0.15),
}

MIN_FACE_COVERAGE = 0.05  # share of the face's pixels an occluder hides, at least ...
MAX_FACE_COVERAGE = 0.45  # ... and at most (more than about half leaves too little face to learn from)
MIN_FACE_PIXELS = 64
PLACEMENT_ATTEMPTS = 8
SCALE_BISECTION_STEPS = 14
MAX_EDGE_SIGMA = 2.5  # px at 256; sharp cut-outs and soft motion-blurred edges both occur
FACE_MARGIN_PX = 7  # background textures keep this far from the face label (hair, hull error)
BACKGROUND_WINDOWS = (64, 48, 32, 24, 16)  # patch sizes tried, largest first

# Paired augmentation ranges (at 256 px; shifts scale with the crop size).
FLIP_PROBABILITY = 0.5
MAX_ROTATION_DEG = 12.0
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.05  # fraction of the crop side
BRIGHTNESS_RANGE = (-25.0, 25.0)  # added, in 8-bit levels
CONTRAST_RANGE = (0.75, 1.3)
SATURATION_RANGE = (0.75, 1.25)
MAX_HUE_SHIFT_DEG = 12.0
BLUR_PROBABILITY = 0.2
GRAIN_PROBABILITY = 0.3


def rng_from_torch(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from one draw of a torch generator (e.g. the engine's
    augmentation generator), so the torch generator's checkpointed state determines it."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, dtype=torch.int64).item())
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- shapes

def capsule(start: np.ndarray, end: np.ndarray, width: float, points_per_cap: int = 8) -> np.ndarray:
    """Polygon of a bar with rounded ends from `start` to `end` (unit-frame coordinates)."""
    direction = end - start
    angle = np.arctan2(direction[1], direction[0])
    cap = np.linspace(-np.pi / 2, np.pi / 2, points_per_cap)
    radius = width / 2
    head = end + radius * np.stack([np.cos(angle + cap), np.sin(angle + cap)], axis=1)
    tail = start + radius * np.stack([np.cos(angle + np.pi + cap), np.sin(angle + np.pi + cap)], axis=1)
    return np.concatenate([head, tail])


def ellipse(centre: np.ndarray, axes: tuple[float, float], angle: float = 0.0, points: int = 32) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    local = np.stack([axes[0] * np.cos(t), axes[1] * np.sin(t)], axis=1)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return centre + local @ rotation.T


def blob_polygons(rng: np.random.Generator) -> list[np.ndarray]:
    count = int(rng.integers(5, 11))
    angles = np.sort((np.arange(count) + rng.uniform(-0.35, 0.35, count)) * 2 * np.pi / count)
    radii = rng.uniform(0.45, 1.0, count)
    return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)]


def hand_polygons(rng: np.random.Generator) -> list[np.ndarray]:
    """Palm centred at the origin, fingers pointing up (-y) in the unit frame."""
    palm_w, palm_h = rng.uniform(0.42, 0.55), rng.uniform(0.5, 0.62)
    polygons = [ellipse(np.zeros(2), (palm_w, palm_h))]
    spread = np.deg2rad(rng.uniform(4, 12))
    finger_width = rng.uniform(0.16, 0.22)
    for i, base_x in enumerate(np.linspace(-0.75, 0.75, 4) * palm_w):
        length = rng.uniform(0.75, 1.05) * (0.8 if i in (0, 3) else 1.0)
        if rng.random() < 0.25:
            length *= 0.45  # a bent finger seen end-on
        angle = -np.pi / 2 + (i - 1.5) * spread
        base = np.array([base_x, -0.6 * palm_h])
        polygons.append(capsule(base, base + length * np.array([np.cos(angle), np.sin(angle)]), finger_width))
    side = 1.0 if rng.random() < 0.5 else -1.0
    thumb_angle = np.deg2rad(rng.uniform(-60, -20))
    thumb_base = np.array([side * 0.7 * palm_w, 0.1 * palm_h])
    thumb_tip = thumb_base + 0.7 * np.array([side * np.cos(thumb_angle), np.sin(thumb_angle)])
    polygons.append(capsule(thumb_base, thumb_tip, finger_width * 1.15))
    return polygons


def bar_polygons(rng: np.random.Generator) -> list[np.ndarray]:
    """A bar along x; its centre is offset so that one end often reaches past the face."""
    length = rng.uniform(1.6, 3.0)
    width = rng.uniform(0.04, 0.1) if rng.random() < 0.3 else rng.uniform(0.14, 0.35)
    offset = rng.uniform(-0.4, 0.4) * length
    start, end = np.array([offset - length / 2, 0.0]), np.array([offset + length / 2, 0.0])
    polygons = [capsule(start, end, width)]
    if rng.random() < 0.4:  # microphone head
        radius = rng.uniform(0.25, 0.45)
        polygons.append(ellipse(end, (radius, radius * rng.uniform(0.8, 1.2))))
    return polygons


SHAPE_BUILDERS = {"blob": blob_polygons, "hand": hand_polygons, "bar": bar_polygons}


def rasterize(polygons: list[np.ndarray], scale: float, angle: float, anchor: np.ndarray, size: int) -> np.ndarray:
    """uint8 {0, 1} mask of unit-frame polygons rotated by `angle`, scaled and moved to `anchor`."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mask = np.zeros((size, size), dtype=np.uint8)
    fixed_point = 16  # 4 fractional bits: sub-pixel vertices, so coverage varies smoothly with scale
    placed = [np.round((anchor + scale * p @ rotation.T) * fixed_point).astype(np.int32) for p in polygons]
    for polygon in placed:  # one call each: a single fillPoly uses even-odd filling, so overlaps would be holes
        cv2.fillPoly(mask, [polygon], 1, lineType=cv2.LINE_8, shift=4)
    return mask


def edge_alpha(mask: np.ndarray, sigma: float) -> np.ndarray:
    """float32 alpha in [0, 1]: the mask with its edge blurred by a Gaussian of `sigma` px."""
    alpha = mask.astype(np.float32)
    if sigma >= 0.3:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return alpha


def fit_scale(polygons: list[np.ndarray], angle: float, anchor: np.ndarray, sigma: float,
              face: np.ndarray, wanted: float) -> np.ndarray | None:
    """Alpha of the shape at the scale whose face coverage (alpha >= 0.5 on `face`) is nearest
    `wanted` among those within [MIN_FACE_COVERAGE, MAX_FACE_COVERAGE]; None if none is.

    Coverage grows with scale (the shapes are close to star-shaped around the anchor), so a
    bisection in log scale, between a speck and twice the crop, finds it.
    """
    size = face.shape[0]
    face_pixels = face.sum()
    low, high = np.log(1.0), np.log(2.0 * size)
    best, best_coverage = None, 0.0
    for _ in range(SCALE_BISECTION_STEPS):
        middle = (low + high) / 2
        alpha = edge_alpha(rasterize(polygons, float(np.exp(middle)), angle, anchor, size), sigma)
        coverage = float(((alpha >= 0.5) & face).sum() / face_pixels)
        if MIN_FACE_COVERAGE <= coverage <= MAX_FACE_COVERAGE and (
            best is None or abs(coverage - wanted) < abs(best_coverage - wanted)
        ):
            best, best_coverage = alpha, coverage
        if coverage < wanted:
            low = middle
        else:
            high = middle
    return best


def place_occluder(face: np.ndarray, rng: np.random.Generator, shape: str | None = None) -> tuple[str, np.ndarray] | None:
    """(shape name, alpha [S, S] float32) of one occluder anchored on a random pixel of `face`
    (bool [S, S]) and covering a random share of it within [MIN_FACE_COVERAGE,
    MAX_FACE_COVERAGE], or None if the face is too small or no draw fits."""
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown occluder shape {shape!r}; expected one of {SHAPES}")
    if int(face.sum()) < MIN_FACE_PIXELS:
        return None
    ys, xs = np.nonzero(face)
    for _ in range(PLACEMENT_ATTEMPTS):
        name = shape or SHAPES[int(rng.integers(len(SHAPES)))]
        polygons = SHAPE_BUILDERS[name](rng)
        angle = rng.uniform(0, 2 * np.pi)
        pick = int(rng.integers(len(xs)))
        anchor = np.array([xs[pick], ys[pick]], dtype=np.float64)
        sigma = rng.uniform(0, MAX_EDGE_SIGMA)
        wanted = rng.uniform(MIN_FACE_COVERAGE + 0.02, MAX_FACE_COVERAGE - 0.02)
        alpha = fit_scale(polygons, angle, anchor, sigma, face, wanted)
        if alpha is not None:
            return name, alpha
    return None


# --------------------------------------------------------------------------- textures

def smooth_noise(size: int, rng: np.random.Generator, base_bgr: np.ndarray, amplitude: float) -> np.ndarray:
    """float32 [S, S, 3]: a colour plus low-frequency value noise (cubic-upsampled random grid)."""
    cells = int(rng.integers(3, 13))
    grid = rng.uniform(-1, 1, (cells, cells, 3)).astype(np.float32)
    grid[..., :] += rng.uniform(-1, 1, (cells, cells, 1)).astype(np.float32)  # mostly luminance variation
    noise = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return base_bgr.astype(np.float32) + amplitude / 2 * noise


def background_patch(crop: np.ndarray, face: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A random square patch of `crop` that lies entirely outside the face (dilated), or None."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * FACE_MARGIN_PX + 1,) * 2)
    near_face = cv2.dilate(face.astype(np.uint8), kernel)
    integral = cv2.integral(near_face)  # [S+1, S+1]; window sums in O(1)
    for window in BACKGROUND_WINDOWS:
        if window > crop.shape[0]:
            continue
        sums = (integral[window:, window:] - integral[:-window, window:]
                - integral[window:, :-window] + integral[:-window, :-window])
        ys, xs = np.nonzero(sums == 0)
        if len(ys):
            pick = int(rng.integers(len(ys)))
            y, x = int(ys[pick]), int(xs[pick])
            return crop[y:y + window, x:x + window]
    return None


def tile_patch(patch: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [S, S, 3]: the patch zoomed, flipped and mirror-tiled (seamless) over the canvas."""
    zoom = rng.uniform(1.0, 2.5)
    side = max(2, round(patch.shape[0] * zoom))
    tile = cv2.resize(patch, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    tile = np.rot90(tile, int(rng.integers(4)))
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    reps = size // side + 2
    tiled = np.pad(tile, ((0, reps * side), (0, reps * side), (0, 0)), mode="symmetric")
    y, x = (int(v) for v in rng.integers(0, side, 2))
    return np.ascontiguousarray(tiled[y:y + size, x:x + size])


def shade(texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiply by a linear lighting gradient and add grain, as on a real, lit object."""
    size = texture.shape[0]
    direction = rng.uniform(0, 2 * np.pi)
    coords = (np.arange(size, dtype=np.float32) / size) - 0.5
    ramp = np.cos(direction) * coords[None, :] + np.sin(direction) * coords[:, None]
    light = 1.0 + rng.uniform(0.15, 0.4) * 2 * ramp
    grain = rng.normal(0, rng.uniform(2.0, 6.0), (size, size, 1)).astype(np.float32)
    return texture * light[..., None] + grain


def occluder_texture(crop: np.ndarray, face: np.ndarray, rng: np.random.Generator, shape: str,
                     donor: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[str, np.ndarray]:
    """(texture kind, float32 [S, S, 3] BGR in 0..255) for an occluder of `shape` on `crop`."""
    size = crop.shape[0]
    kind = TEXTURES[int(rng.choice(len(TEXTURES), p=TEXTURE_WEIGHTS[shape]))]
    if kind == "background":
        source_crop, source_face = crop, face
        if donor is not None and rng.random() < 0.5:
            source_crop, source_face = donor[0], np.asarray(donor[1]) > 0
        patch = background_patch(source_crop, source_face, rng)
        if patch is not None:
            return kind, shade(tile_patch(patch, size, rng), rng)
        kind = "noise"  # the face fills the crop: no background to borrow
    if kind == "skin" and face.any():
        base = np.median(crop[face], axis=0) * rng.uniform(0.8, 1.2, 3)
        return kind, shade(smooth_noise(size, rng, base, rng.uniform(15, 40)), rng)
    base = rng.uniform(20, 235) + rng.uniform(-50, 50, 3)  # a grey level plus a moderate tint
    return "noise", shade(smooth_noise(size, rng, base, rng.uniform(30, 90)), rng)


# --------------------------------------------------------------------------- public API

def _check_pair(crop: np.ndarray, label: np.ndarray) -> None:
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"expected a square uint8 BGR crop [S, S, 3], got {crop.dtype} {crop.shape}")
    if label.shape != crop.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match the crop {crop.shape[:2]}")


def occlude(crop: np.ndarray, label: np.ndarray, rng: np.random.Generator,
            donor: tuple[np.ndarray, np.ndarray] | None = None,
            shape: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste one synthetic occluder over the face: (crop, label, occluder_mask).

    `crop` uint8 BGR [S, S, 3], `label` [S, S] (non-zero = face). `donor` is an optional
    (crop, label) of another face to borrow background texture from. `shape` forces one of
    SHAPES (default: random). Returns new arrays: the composited crop, the label without the
    occluded pixels (uint8 {0, 255}) and the occluder mask (uint8 {0, 255}; alpha >= 0.5, also
    where it lies off the face). The face coverage of the occluder is within
    [MIN_FACE_COVERAGE, MAX_FACE_COVERAGE]; when nothing fits, the inputs come back unchanged
    with an empty occluder mask.
    """
    crop, label = np.asarray(crop), np.asarray(label)
    _check_pair(crop, label)
    face = label > 0
    clean_label = face.astype(np.uint8) * 255
    placed = place_occluder(face, rng, shape)
    if placed is None:
        return crop.copy(), clean_label, np.zeros_like(clean_label)
    name, alpha = placed
    _, texture = occluder_texture(crop, face, rng, name, donor)
    blended = crop.astype(np.float32) * (1 - alpha[..., None]) + texture * alpha[..., None]
    occluder = alpha >= 0.5
    out_crop = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out_crop, np.where(occluder, 0, clean_label).astype(np.uint8), occluder.astype(np.uint8) * 255


def random_affine(size: int, rng: np.random.Generator) -> np.ndarray:
    """2x3 matrix: optional horizontal flip, then a small rotation, scale and shift about the centre."""
    centre = (size - 1) / 2
    flip = np.eye(3)
    if rng.random() < FLIP_PROBABILITY:
        flip = np.array([[-1.0, 0.0, size - 1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rotation = cv2.getRotationMatrix2D((centre, centre), rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG),
                                       rng.uniform(*SCALE_RANGE))
    rotation[:, 2] += rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2) * size
    return (np.vstack([rotation, [0, 0, 1]]) @ flip)[:2]


def geometric_augment(crop: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip + affine on crop (bilinear) and label (bilinear, thresholded at half)."""
    size = crop.shape[0]
    matrix = random_affine(size, rng)
    out_crop = cv2.warpAffine(crop, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    warped = cv2.warpAffine((label > 0).astype(np.float32), matrix, (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    return out_crop, (warped >= 0.5).astype(np.uint8) * 255


def colour_augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random hue, saturation, contrast, brightness, and sometimes blur or grain (image only)."""
    hsv = cv2.cvtColor(crop.astype(np.float32) / 255.0, cv2.COLOR_BGR2HSV)  # H in degrees for float input
    hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-MAX_HUE_SHIFT_DEG, MAX_HUE_SHIFT_DEG), 360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*SATURATION_RANGE), 0.0, 1.0)
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * 255.0
    mean = image.mean()
    image = (image - mean) * rng.uniform(*CONTRAST_RANGE) + mean + rng.uniform(*BRIGHTNESS_RANGE)
    if rng.random() < BLUR_PROBABILITY:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.2))
    if rng.random() < GRAIN_PROBABILITY:
        image = image + rng.normal(0, rng.uniform(1.0, 4.0), image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def augment_pair(crop: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 donor: tuple[np.ndarray, np.ndarray] | None = None,
                 occlusion_probability: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: maybe an occluder (with probability `occlusion_probability`), then
    the same geometric augmentation on crop and label, then colour augmentation of the crop.
    Returns (crop uint8 BGR [S, S, 3], label uint8 {0, 255} [S, S])."""
    crop, label = np.asarray(crop), np.asarray(label)
    _check_pair(crop, label)
    if rng.random() < occlusion_probability:
        crop, label, _ = occlude(crop, label, rng, donor)
    crop, label = geometric_augment(crop, label, rng)
    return colour_augment(crop, rng), label
