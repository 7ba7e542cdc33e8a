"""XSeg parts without Dagster: U-Net, loss, IoU, synthetic occluders, paired augmentation and
user-mask labels, on real faces (public-domain Hopper and astronaut photos aligned with
MediaPipe + facepipe.align)."""

from __future__ import annotations

import os

import cv2
import matplotlib
import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.align import align_face, warp_to_crop
from facepipe.labels import (
    UserMaskError,
    build_labels,
    frame_stem,
    user_masks_digest,
)
from facepipe.landmarks import detect_static
from facepipe.models.xseg import (
    XSegNHWC,
    XSegUNet,
    crops_to_tensor,
    iou_per_sample,
    masks_to_tensor,
    mean_iou,
    predict_probabilities,
    xseg_loss,
)
from facepipe.occluders import (
    MAX_EDGE_SIGMA,
    MAX_FACE_COVERAGE,
    MIN_FACE_COVERAGE,
    SHAPES,
    augment_pair,
    background_patch,
    occlude,
)

SIZE = 256
# (dx, dy, degrees) applied to each photo before detection: the same face at several placements.
PLACEMENTS = [(0, 0, 0.0), (18, -12, 6.0), (-22, 14, -8.0)]


def photo(name: str) -> np.ndarray:
    if name == "hopper":
        return cv2.imread(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"))
    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


def moved(image: np.ndarray, dx: float, dy: float, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    matrix[:, 2] += (dx, dy)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT101)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def faces() -> list[dict]:
    """Frames, landmarks, aligned crops, hull masks and matrices of both photos at each placement."""
    out = []
    for name in ("hopper", "astronaut"):
        for dx, dy, degrees in PLACEMENTS:
            frame = moved(photo(name), dx, dy, degrees)
            landmarks = detect_static(frame)
            assert landmarks is not None, f"MediaPipe found no face in {name} at {(dx, dy, degrees)}"
            crop, hull, _, matrix = align_face(frame, landmarks, SIZE)
            out.append({"name": name, "frame": frame, "landmarks": landmarks, "crop": crop, "hull": hull, "matrix": matrix})
    return out


# --------------------------------------------------------------------------- U-Net

def test_unet_is_fully_convolutional_and_outputs_logits():
    torch.manual_seed(0)
    model = XSegUNet(width=4)
    assert not any(isinstance(m, (nn.Sigmoid, nn.modules.batchnorm._BatchNorm)) for m in model.modules())
    with torch.no_grad():
        for size in (256, 128):
            out = model(torch.rand(2, 3, size, size))
            assert out.shape == (2, 1, size, size)
        model.head.bias.fill_(4.0)  # logits are not squashed: a large bias shows up as values > 1
        out = model(torch.rand(1, 3, 128, 128))
        assert out.max() > 1.0 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.rand(1, 3, 100, 100))


def test_unet_output_of_a_face_does_not_depend_on_its_batch():
    """GroupNorm instead of BatchNorm: no statistics shared across the batch, in train mode too."""
    torch.manual_seed(0)
    model = XSegUNet(width=4, depth=3).train()
    batch = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        alone = model(batch[:1])
        together = model(batch)
    torch.testing.assert_close(alone, together[:1], rtol=1e-4, atol=1e-5)


def test_nhwc_wrapper_and_predict_give_one_sigmoid_of_the_logits(faces):
    torch.manual_seed(0)
    model = XSegUNet(width=4).eval()
    crops = np.stack([f["crop"] for f in faces[:2]])
    with torch.no_grad():
        logits = model(crops_to_tensor(crops))
        nhwc = XSegNHWC(model)(torch.from_numpy(crops).float() / 255.0)
    assert nhwc.shape == (2, SIZE, SIZE, 1)
    torch.testing.assert_close(nhwc[..., 0], torch.sigmoid(logits[:, 0]))
    probabilities = predict_probabilities(model, crops, batch_size=1)
    np.testing.assert_allclose(probabilities, torch.sigmoid(logits[:, 0]).numpy(), atol=1e-4)  # batch 1 vs 2 kernels


# --------------------------------------------------------------------------- loss and IoU

def manual_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE from log-sigmoid written out, plus soft Dice (smoothing 1) per sample, batch mean."""
    log_p, log_not_p = -F.softplus(-logits), -F.softplus(logits)
    bce = -(target * log_p + (1 - target) * log_not_p).mean()
    p = 1 / (1 + torch.exp(-logits))
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (p * target).sum(dims) + 1) / (p.sum(dims) + target.sum(dims) + 1)
    return bce + dice.mean()


def test_loss_is_bce_with_logits_plus_soft_dice():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 16, 16, generator=generator) * 3
    target = (torch.rand(3, 1, 16, 16, generator=generator) > 0.6).float()
    torch.testing.assert_close(xseg_loss(logits, target), manual_loss(logits, target))
    with pytest.raises(ValueError, match="differ in shape"):
        xseg_loss(logits, target[:, 0])


def test_loss_is_finite_for_extreme_logits_and_applies_one_sigmoid():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    right = (target * 2 - 1) * 1e4  # confidently right
    right.requires_grad_(True)
    loss = xseg_loss(right, target)
    loss.backward()
    # A second sigmoid (model output squashed, then BCE on it) would leave about 0.3 here.
    assert torch.isfinite(loss) and loss.item() < 1e-3
    assert torch.isfinite(right.grad).all()
    wrong = -(target * 2 - 1) * 1e4
    wrong_loss = xseg_loss(wrong, target)
    assert torch.isfinite(wrong_loss) and wrong_loss.item() > 100


def test_iou_per_sample_and_mean():
    predicted = np.zeros((3, 4, 4), dtype=bool)
    target = np.zeros((3, 4, 4), dtype=bool)
    predicted[0, :2], target[0, :2] = True, True  # identical
    predicted[1, :2], target[1, 1:3] = True, True  # 4 of 12
    np.testing.assert_allclose(iou_per_sample(predicted, target), [1.0, 1 / 3, 1.0])  # both empty counts as 1
    assert mean_iou(predicted, target) == pytest.approx((2 + 1 / 3) / 3)


def test_a_few_dozen_steps_on_real_faces_raise_iou(faces):
    size = 64  # fully convolutional: train small on the CPU
    crops = np.stack([cv2.resize(f["crop"], (size, size), interpolation=cv2.INTER_AREA) for f in faces])
    hulls = np.stack([cv2.resize(f["hull"], (size, size), interpolation=cv2.INTER_NEAREST) for f in faces])
    images, targets = crops_to_tensor(crops), masks_to_tensor(hulls)
    torch.manual_seed(0)
    model = XSegUNet(width=8, depth=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def iou_now() -> float:
        with torch.no_grad():
            return mean_iou(model(images)[:, 0] > 0, hulls > 0)

    before = iou_now()
    losses = []
    for _ in range(40):
        loss = xseg_loss(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = iou_now()
    assert losses[-1] < losses[0] * 0.6
    assert after > 0.85 and after > before + 0.2, (before, after)


# --------------------------------------------------------------------------- occluders

def test_occlusion_is_deterministic_given_the_seed(faces):
    crop, hull = faces[0]["crop"], faces[0]["hull"]
    donor = (faces[3]["crop"], faces[3]["hull"])
    first = occlude(crop, hull, np.random.default_rng(7), donor)
    again = occlude(crop, hull, np.random.default_rng(7), donor)
    other = occlude(crop, hull, np.random.default_rng(8), donor)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    augmented = augment_pair(crop, hull, np.random.default_rng(3), donor)
    for a, b in zip(augmented, augment_pair(crop, hull, np.random.default_rng(3), donor)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", SHAPES)
def test_occluder_is_removed_from_the_label_and_covers_a_bounded_share(faces, shape):
    kernel = np.ones((2 * int(np.ceil(3 * MAX_EDGE_SIGMA)) + 3,) * 2, np.uint8)
    for seed in range(12):
        face = faces[seed % len(faces)]
        crop, hull = face["crop"], face["hull"]
        out_crop, label, occluder = occlude(crop, hull, np.random.default_rng(seed), shape=shape)
        occluded, on_face = occluder > 0, hull > 0
        assert occluded.any(), f"no {shape} placed for seed {seed}"
        np.testing.assert_array_equal(label > 0, on_face & ~occluded)
        assert set(np.unique(label)) <= {0, 255}
        coverage = (occluded & on_face).sum() / on_face.sum()
        assert MIN_FACE_COVERAGE <= coverage <= MAX_FACE_COVERAGE, (shape, seed, coverage)
        # Pixels away from the occluder (beyond its blurred edge) are untouched.
        far = cv2.dilate(occluder, kernel) == 0
        np.testing.assert_array_equal(out_crop[far], crop[far])
        assert not np.array_equal(out_crop[occluded], crop[occluded])


def test_occluder_texture_is_not_a_flat_colour_even_on_a_flat_background(faces):
    crop, hull = faces[0]["crop"].copy(), faces[0]["hull"]
    crop[hull == 0] = (90, 120, 150)  # nothing but one colour to borrow from
    for seed in range(10):
        out_crop, _, occluder = occlude(crop, hull, np.random.default_rng(seed))
        inside = cv2.erode(occluder, np.ones((7, 7), np.uint8)) > 0  # away from the blended edge
        assert inside.sum() > 50
        assert out_crop[inside].astype(np.float64).std(axis=0).mean() > 4.0, seed


def test_background_texture_comes_from_outside_the_face(faces):
    crop, hull = faces[1]["crop"].copy(), faces[1]["hull"]
    crop[hull > 0] = (0, 0, 255)  # mark the face in pure red
    crop[hull == 0] = np.clip(crop[hull == 0], 0, 200)  # and make sure nothing else is
    for seed in range(10):
        patch = background_patch(crop, hull > 0, np.random.default_rng(seed))
        assert patch is not None and patch.shape[0] >= 16
        assert not np.all(patch == (0, 0, 255), axis=-1).any()
    assert background_patch(crop, np.ones_like(hull, bool), np.random.default_rng(0)) is None


def test_geometric_augmentation_moves_image_and_label_together(faces):
    hull = faces[4]["hull"]
    crop = np.repeat(hull[..., None], 3, axis=2)  # an image that *is* its label
    for seed in range(8):
        out_crop, label = augment_pair(crop, hull, np.random.default_rng(seed), occlusion_probability=0.0)
        bright = out_crop.mean(axis=2) > 127
        assert mean_iou(bright[None], (label > 0)[None]) > 0.97, seed
        assert not np.array_equal(label, hull)


# --------------------------------------------------------------------------- user-mask labels

VIDEO_FRAMES = (0, 24, 48)  # hopper placements as frames of clip.mp4


@pytest.fixture(scope="module")
def face_set(faces):
    """A face index like the faces asset writes: 3 frames of clip.mp4 (Hopper) and one still."""
    rows, hulls, frames = [], [], []
    chosen = [(f, "clip.mp4", "video", i) for f, i in zip(faces[:3], VIDEO_FRAMES)]
    chosen.append((faces[3], "stills/astro.png", "image", 0))
    for face_id, (face, source, kind, frame_index) in enumerate(chosen):
        row = {"face_id": face_id, "frame_id": face_id, "source": source, "kind": kind, "source_frame_index": frame_index}
        row.update({f"m{i}": v for i, v in enumerate(face["matrix"].reshape(-1))})
        rows.append(row)
        hulls.append(face["hull"])
        frames.append(face)
    sizes = {"clip.mp4": faces[0]["frame"].shape[1::-1], "stills/astro.png": faces[3]["frame"].shape[1::-1]}
    return pd.DataFrame(rows), np.stack(hulls), frames, sizes


def frame_mask_with_a_bar(face: dict) -> np.ndarray:
    """A user mask drawn on the frame: the landmark hull minus a diagonal bar (an occluder)."""
    mask = np.zeros(face["frame"].shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(face["landmarks"][:, :2]).astype(np.int32)), 255)
    x0, y0 = face["landmarks"][:, :2].min(axis=0)
    x1, y1 = face["landmarks"][:, :2].max(axis=0)
    cv2.line(mask, (int(x0), int(y1)), (int(x1), int(y0)), 0, 30)
    return mask


def test_frame_stem_names():
    assert frame_stem("photo.png", "image", 0) == "photo"
    assert frame_stem("clip.mp4", "video", 12) == "clip_000012"
    assert frame_stem("takes/clip.mov", "video", 3) == "takes/clip_000003"
    assert frame_stem("stills/a.jpg", "image", 0) == "stills/a"


def test_without_masks_labels_are_the_hulls(face_set, tmp_path):
    index, hulls, _, sizes = face_set
    labels, report = build_labels(index, hulls, tmp_path / "masks", sizes)
    np.testing.assert_array_equal(labels, hulls)
    assert report.count == 0 and report.files == {}


def test_a_user_mask_overrides_its_own_face_and_nothing_else(face_set, tmp_path):
    index, hulls, frames, sizes = face_set
    masks_dir = tmp_path / "masks"
    (masks_dir / "stills").mkdir(parents=True)
    video_mask = frame_mask_with_a_bar(frames[1])
    cv2.imwrite(str(masks_dir / "clip_000024.png"), video_mask)
    labels, report = build_labels(index, hulls, masks_dir, sizes)
    expected = warp_to_crop(video_mask, frames[1]["matrix"], SIZE, nearest=True)
    np.testing.assert_array_equal(labels[1], expected)
    assert not np.array_equal(labels[1], hulls[1])  # the bar is gone from the label
    for other in (0, 2, 3):
        np.testing.assert_array_equal(labels[other], hulls[other])
    assert report.face_ids == [1] and report.files == {"clip_000024.png": [1]}

    still_mask = frame_mask_with_a_bar(frames[3])
    cv2.imwrite(str(masks_dir / "stills" / "astro.png"), still_mask)
    labels_2, report_2 = build_labels(index, hulls, masks_dir, sizes)
    np.testing.assert_array_equal(labels_2[:3], labels[:3])
    np.testing.assert_array_equal(labels_2[3], warp_to_crop(still_mask, frames[3]["matrix"], SIZE, nearest=True))
    assert report_2.face_ids == [1, 3]


def test_mask_digest_follows_the_mask_content(face_set, tmp_path):
    _, _, frames, _ = face_set
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    empty = user_masks_digest(masks_dir)
    mask = frame_mask_with_a_bar(frames[0])
    cv2.imwrite(str(masks_dir / "clip_000000.png"), mask)
    first = user_masks_digest(masks_dir)
    cv2.imwrite(str(masks_dir / "clip_000000.png"), 255 - mask)
    assert len({empty, first, user_masks_digest(masks_dir)}) == 3


def test_a_mask_naming_no_frame_is_an_error_naming_the_file(face_set, tmp_path):
    index, hulls, frames, sizes = face_set
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    cv2.imwrite(str(masks_dir / "clip_000025.png"), frame_mask_with_a_bar(frames[0]))
    with pytest.raises(UserMaskError) as error:
        build_labels(index, hulls, masks_dir, sizes)
    message = str(error.value)
    assert "clip_000025.png" in message
    assert "clip_000024.png" in message and "stills/astro.png" in message


def test_a_mask_of_a_face_that_curation_dropped_is_reported_not_refused(face_set, tmp_path):
    index, hulls, frames, sizes = face_set
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    cv2.imwrite(str(masks_dir / "clip_000025.png"), frame_mask_with_a_bar(frames[0]))
    labels, report = build_labels(index, hulls, masks_dir, sizes, dropped_frames=["clip_000025"])
    np.testing.assert_array_equal(labels, hulls)
    assert report.count == 0 and report.not_used == ["clip_000025.png"]
    assert report.as_metadata()["masks_of_dropped_faces"] == ["clip_000025.png"]


def test_a_mask_of_the_wrong_size_is_an_error_naming_the_file_and_size(face_set, tmp_path):
    index, hulls, frames, sizes = face_set
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    small = cv2.resize(frame_mask_with_a_bar(frames[0]), (200, 150))
    cv2.imwrite(str(masks_dir / "clip_000048.png"), small)
    width, height = sizes["clip.mp4"]
    with pytest.raises(UserMaskError, match=rf"clip_000048\.png: mask is 200x150 .*clip\.mp4 frame 48\) is {width}x{height}"):
        build_labels(index, hulls, masks_dir, sizes)


def test_a_non_png_mask_is_an_error(face_set, tmp_path):
    index, hulls, frames, sizes = face_set
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    cv2.imwrite(str(masks_dir / "clip_000000.jpg"), frame_mask_with_a_bar(frames[0]))
    with pytest.raises(UserMaskError, match=r"clip_000000\.jpg: user masks must be PNG"):
        build_labels(index, hulls, masks_dir, sizes)


def test_occluder_truth_iou_scores_the_hull_and_the_model_against_the_face_minus_its_occluder():
    from facepipe.train.tasks.xseg import occluder_truth_iou
    size = 32
    hull = np.zeros((size, size), np.uint8)
    hull[8:24, 8:24] = 255
    occluder = np.zeros((size, size), np.uint8)
    occluder[:, :16] = 255  # hides the hull's left half
    truth = (hull > 127) & ~(occluder > 127)
    index = pd.DataFrame([{"source": "clip", "source_frame_index": 0,
                           **{f"m{i}": v for i, v in enumerate([1, 0, 0, 0, 1, 0])}}])
    predicted = np.where(truth, 255, 0).astype(np.uint8)
    scores = occluder_truth_iou(index, hull[None], predicted[None], {"clip": occluder[None]})
    assert scores["occluded_faces"] == 1
    assert scores["hull_iou"] == pytest.approx(0.5) and scores["model_iou"] == pytest.approx(1.0)
    # a face without a known occluder is not scored
    assert occluder_truth_iou(index, hull[None], predicted[None], {})["occluded_faces"] == 0
