"""The two source photos and the square face crops every sample frame is rendered from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# Side of the square sample frames (and of the face crops they are rendered from), in pixels.
SAMPLE_FRAME_SIZE = 352

# Bounding boxes (x0, y0, x1, y1, pixels) of the 478 FaceMesh landmarks on the source photos,
# measured once. Hard-coded so that cropping does not depend on a detector run.
HOPPER_FACE_BOX = (173, 132, 356, 334)
ASTRONAUT_FACE_BOX = (179, 71, 271, 177)

# A face crop is square, centred on the face box, with the box's longer side this fraction of it:
# enough background around the face for turns and shifts to stay inside the picture.
FACE_FRACTION = 0.5
# The face (landmark hull) in a face crop, approximated by an ellipse: centre and semi-axes as
# fractions of the crop side. Used to keep occluders from hiding too much of the face.
FACE_ELLIPSE_CENTRE = (0.5, 0.5)
FACE_ELLIPSE_AXES = (0.22, 0.25)


def hopper_image() -> np.ndarray:
    """Grace Hopper's portrait from matplotlib's sample data, BGR uint8 (600x512)."""
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path} is missing or unreadable: reinstall matplotlib, which ships it")
    return image


def astronaut_image() -> np.ndarray:
    """Eileen Collins' portrait from scikit-image's sample data, BGR uint8 (512x512)."""
    from skimage import data

    return np.ascontiguousarray(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))


def face_crop(image: np.ndarray, face_box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Square crop centred on `face_box`, the box's longer side `FACE_FRACTION` of it, at `size` px."""
    x0, y0, x1, y1 = face_box
    side = max(x1 - x0, y1 - y0) / FACE_FRACTION
    scale = size / side
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    matrix = np.array(
        [[scale, 0.0, size / 2 - scale * centre_x], [0.0, scale, size / 2 - scale * centre_y]],
        dtype=np.float64,
    )
    # Reflection fills whatever part of the square lies outside the photo.
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def hopper_face(size: int = SAMPLE_FRAME_SIZE) -> np.ndarray:
    """Grace Hopper's face crop (BGR uint8, `size` square), ready for `render_head_video`."""
    return face_crop(hopper_image(), HOPPER_FACE_BOX, size)


def astronaut_face(size: int = SAMPLE_FRAME_SIZE) -> np.ndarray:
    """Eileen Collins' face crop (BGR uint8, `size` square), ready for `render_head_video`."""
    return face_crop(astronaut_image(), ASTRONAUT_FACE_BOX, size)


def face_ellipse_mask(size: int) -> np.ndarray:
    """uint8 {0, 1} approximate face region of a face crop (see FACE_ELLIPSE_*)."""
    mask = np.zeros((size, size), dtype=np.uint8)
    centre = (round(FACE_ELLIPSE_CENTRE[0] * size), round(FACE_ELLIPSE_CENTRE[1] * size))
    axes = (round(FACE_ELLIPSE_AXES[0] * size), round(FACE_ELLIPSE_AXES[1] * size))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    return mask


def square_face(face_bgr: np.ndarray, size: int) -> np.ndarray:
    """The face crop at `size`; refuses images that are not a square face crop."""
    height, width = face_bgr.shape[:2]
    if face_bgr.ndim != 3 or face_bgr.shape[2] != 3 or face_bgr.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 image, got shape {face_bgr.shape} dtype {face_bgr.dtype}")
    if abs(height - width) > 0.02 * max(height, width):
        raise ValueError(
            f"expected a square face crop with the face centred, got {width}x{height}: "
            "use hopper_face(), astronaut_face() or face_crop(image, face_box, size)"
        )
    if (height, width) == (size, size):
        return face_bgr
    return cv2.resize(face_bgr, (size, size), interpolation=cv2.INTER_AREA if height > size else cv2.INTER_CUBIC)
