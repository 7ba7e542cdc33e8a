"""The identity autoencoder, its augmentation and its losses, on real aligned faces."""

from __future__ import annotations

import functools
import math
import os

import cv2
import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

from facepipe.align import align_face
from facepipe.evaluate import facefusion_sharpen
from facepipe.faces import EYE_CONTOURS, LIPS, feature_masks, resize_crops
from facepipe.landmarks import detect_static
from facepipe.models.augment import (
    AugmentConfig,
    augment_batch,
    augment_with_features,
    elastic_grid,
    elastic_warp,
    faces_to_tensors,
    random_homography,
    sharpen,
    stored_faces,
    tensors_to_crops,
    warp_face_batch,
)
from facepipe.models.autoencoder import (
    AutoencoderConfig,
    IdentityAutoencoder,
    adaptable_layers,
    parameter_counts,
)
from facepipe.models.losses import (
    SSIM_SIGMA,
    SSIM_WINDOW,
    LossWeights,
    dssim,
    gaussian_taps,
    masked_l1,
    reconstruction_loss,
)

STORED_SIZE = 256
# Offsets (px in the photo) added to the detected landmarks: each moves the alignment window,
# so the crops are the same face framed slightly differently, like neighbouring video frames.
LANDMARK_SHIFTS = [(0, 0), (6, 0), (-6, 0), (0, 6), (0, -6), (5, 5)]


@functools.cache
def hopper_aligned() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real aligned faces as the faces stage stores them: BGR uint8 crops [6, 256, 256, 3], hull
    masks [6, 256, 256] {0, 255} and crop-space landmarks [6, 478, 2], from the Grace Hopper photo
    (US Navy, public domain), landmarked by MediaPipe and aligned by facepipe.align."""
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    photo = cv2.imread(path)
    landmarks = detect_static(photo)
    assert landmarks is not None, "MediaPipe found no face in the Grace Hopper photo"
    aligned = [align_face(photo, landmarks + np.array([dx, dy, 0], np.float32), STORED_SIZE) for dx, dy in LANDMARK_SHIFTS]
    return tuple(np.stack([face[part] for face in aligned]) for part in range(3))


def hopper_faces() -> tuple[np.ndarray, np.ndarray]:
    crops, masks, _landmarks = hopper_aligned()
    return crops, masks


def face_tensors(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    crops, masks = hopper_faces()
    return faces_to_tensors(resize_crops(crops, size), resize_crops(masks, size))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(size: int) -> AutoencoderConfig:
    # Narrower than the CPU default so the tests stay fast on shared cores; same architecture.
    return AutoencoderConfig(size=size, width=16, latent_dim=128)


# ---------------------------------------------------------------------------------------------
# Model


@pytest.mark.parametrize("size", [64, 96])
def test_autoencoder_shapes_and_parts(size):
    torch.manual_seed(0)
    model = IdentityAutoencoder(AutoencoderConfig(size=size)).eval()
    images, _ = face_tensors(size)
    with torch.no_grad():
        bgr, mask_logits = model(images[:2])
        code = model.encode(images[:2])
        decoded_bgr, decoded_logits = model.decode(code)
    assert bgr.shape == (2, 3, size, size) and mask_logits.shape == (2, 1, size, size)
    assert code.shape == (2, 8 * 24, size // 16, size // 16)
    assert torch.equal(bgr, decoded_bgr) and torch.equal(mask_logits, decoded_logits)
    assert 0 <= bgr.min() and bgr.max() <= 1
    with torch.no_grad():  # logits, not probabilities: the mask head's raw output, no sigmoid
        raw = model.decoder.shuffle(model.decoder.to_mask(model.decoder.blocks(code)))
    assert torch.equal(mask_logits, raw)


def test_autoencoder_weights_live_in_plain_conv_and_linear_layers():
    """LoRA targets encoder/bottleneck/decoder by name; no normalisation layers anywhere."""
    model = IdentityAutoencoder()
    names = [name for name, _ in model.named_children()]
    assert names == ["encoder", "bottleneck", "decoder"]
    for name, module in model.named_modules():
        if list(module.parameters(recurse=False)):
            assert isinstance(module, (nn.Conv2d, nn.Linear)), f"{name} is a {type(module).__name__}"
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    counts = parameter_counts(model)
    assert counts["total"] == counts["encoder"] + counts["bottleneck"] + counts["decoder"]


def test_autoencoder_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="divisible"):
        AutoencoderConfig(size=100)
    model = IdentityAutoencoder(AutoencoderConfig(size=64))
    with pytest.raises(ValueError, match=r"\[N, 3, 64, 64\]"):
        model(torch.zeros(1, 3, 96, 96))


def test_autoencoder_outputs_do_not_depend_on_the_batch():
    """No batch statistics: a face gives the same output alone or among others."""
    torch.manual_seed(0)
    model = IdentityAutoencoder(small_config(64)).eval()
    images, _ = face_tensors(64)
    with torch.no_grad():
        together, _ = model(images)
        alone, _ = model(images[2:3])
    torch.testing.assert_close(together[2:3], alone, atol=1e-6, rtol=0)


def test_a_fresh_decoder_paints_no_checkerboard():
    """ICNR: before training, every pixel-shuffle upsampling is nearest-neighbour, so the output
    is constant on each 2x2 block; a plain initialisation gives four unrelated sub-pixels."""
    torch.manual_seed(0)
    model = IdentityAutoencoder(AutoencoderConfig(size=32, width=8, latent_dim=16, depth=2))
    with torch.no_grad():
        bgr, logits = model.decode(torch.randn(2, *model.bottleneck.code_shape))
    for image in (bgr, logits):
        corners = [image[..., dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)]
        assert all(torch.equal(corners[0], corner) for corner in corners[1:])
    plain = nn.Sequential(nn.Conv2d(8, 4 * 3, 3, padding=1), nn.PixelShuffle(2))
    with torch.no_grad():
        out = plain(torch.randn(1, 8, 8, 8))
    assert not torch.equal(out[..., 0::2, 0::2], out[..., 1::2, 1::2])


def test_autoencoder_overfits_a_handful_of_real_faces():
    torch.manual_seed(0)
    images, masks = face_tensors(64)
    model = IdentityAutoencoder(small_config(64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        bgr, mask_logits = model(images)
        loss, parts = reconstruction_loss(bgr, mask_logits, images, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(parts)
    first, last = history[0], history[-1]
    assert float(last["total"]) < 0.5 * float(first["total"]), [float(p["total"]) for p in history]
    assert float(last["l1"]) < float(first["l1"]) and float(last["mask"]) < 0.5 * float(first["mask"])


# ---------------------------------------------------------------------------------------------
# Augmentation


def test_resize_crops_uses_area_filter_and_keeps_bgr():
    crops, masks = hopper_faces()
    small_crops, small_masks = resize_crops(crops, 96), resize_crops(masks, 96)
    assert small_crops.shape == (6, 96, 96, 3) and small_masks.shape == (6, 96, 96)
    assert small_crops.dtype == np.uint8 and small_masks.dtype == np.uint8
    np.testing.assert_array_equal(small_crops[3], cv2.resize(crops[3], (96, 96), interpolation=cv2.INTER_AREA))
    images, mask_tensor = faces_to_tensors(small_crops, small_masks)
    assert images.shape == (6, 3, 96, 96) and mask_tensor.shape == (6, 1, 96, 96)
    np.testing.assert_allclose(images[1, 0].numpy(), small_crops[1, :, :, 0] / 255.0, atol=1e-7)  # channel 0 stays blue
    assert 0 <= mask_tensor.min() and mask_tensor.max() == 1.0
    np.testing.assert_array_equal(tensors_to_crops(images), small_crops)  # and back, byte for byte
    painted = tensors_to_crops(torch.tensor([-0.2, 0.6, 1.3]).reshape(1, 3, 1, 1))  # a decoder's paint may overshoot
    assert painted.shape == (1, 1, 1, 3) and painted.ravel().tolist() == [0, 153, 255]


def test_homography_is_seeded_per_generator():
    first = random_homography(torch.Generator().manual_seed(7), 4)
    again = random_homography(torch.Generator().manual_seed(7), 4)
    other = random_homography(torch.Generator().manual_seed(8), 4)
    assert first.shape == (4, 3, 3) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])  # one matrix per sample
    identity = random_homography(torch.Generator().manual_seed(7), 2, rotation_deg=0, scale=0, shift=0, perspective=0)
    assert torch.equal(identity, torch.eye(3).expand(2, 3, 3))


def test_homography_coordinate_convention():
    """A shift of f·size samples f·size pixels away: with 8 px at 64, output(x) = input(x + 8)."""
    images, masks = face_tensors(64)
    shift = torch.eye(3).expand(6, 3, 3).clone()
    shift[:, 0, 2] = 2 * 8 / 64
    warped, _, warped_masks = warp_face_batch(images, images, masks, shift)
    torch.testing.assert_close(warped[..., :-8], images[..., 8:], atol=1e-5, rtol=0)
    # Outside the source: images repeat their border, masks are empty.
    torch.testing.assert_close(warped[..., -8:], images[..., -1:].expand_as(warped[..., -8:]), atol=1e-5, rtol=0)
    assert warped_masks[..., -7:].abs().max() == 0


def test_same_homography_on_identical_input_and_target_gives_identical_outputs():
    images, masks = face_tensors(64)
    homographies = random_homography(torch.Generator().manual_seed(3), 6)
    inputs, targets, target_masks = warp_face_batch(images, images.clone(), masks, homographies)
    assert torch.equal(inputs, targets)
    assert not torch.allclose(inputs, images, atol=1e-3)  # it did warp
    # The mask moves with the face: warping an image of the mask gives the warped mask.
    mask_as_image = masks.expand(-1, 3, -1, -1)
    warped_mask_image, _, _ = warp_face_batch(mask_as_image, mask_as_image, masks, homographies)
    inside = (warped_mask_image[:, :, 2:-2, 2:-2] - target_masks[:, :, 2:-2, 2:-2]).abs()
    assert inside.max() < 1e-5  # away from the border, where padding modes differ


def test_elastic_warp_is_smooth_seeded_and_keeps_the_border():
    images, _ = face_tensors(64)
    warped = elastic_warp(images, torch.Generator().manual_seed(1), strength=0.05)
    again = elastic_warp(images, torch.Generator().manual_seed(1), strength=0.05)
    assert torch.equal(warped, again)
    assert (warped - images).abs().mean() > 0.005
    assert torch.equal(elastic_warp(images, torch.Generator().manual_seed(1), strength=0.0), images)


def test_augment_batch_warps_all_alike_and_elastic_only_the_input():
    images, masks = face_tensors(64)
    config = AugmentConfig(sharpen=0.0)
    inputs, targets, target_masks = augment_batch(images, masks, torch.Generator().manual_seed(5), config)
    no_elastic = AugmentConfig(elastic_strength=0.0, sharpen=0.0)
    plain_inputs, plain_targets, plain_masks = augment_batch(images, masks, torch.Generator().manual_seed(5), no_elastic)
    # Homography and colour are drawn first, so targets and masks do not depend on the elastic warp.
    assert torch.equal(targets, plain_targets) and torch.equal(target_masks, plain_masks)
    assert torch.equal(plain_inputs, plain_targets)
    assert (inputs - targets).abs().mean() > 0.005


def test_input_warp_is_the_elastic_warp_of_the_homography_warp():
    """One composed resampling equals warping by H and then elastically (checked where H is a
    whole-pixel shift, so the sequential version is exact too)."""
    images, masks = face_tensors(64)
    shift = torch.eye(3).expand(6, 3, 3).clone()
    shift[:, 1, 2] = 2 * 4 / 64
    distortion = elastic_grid(torch.Generator().manual_seed(9), 6, 64, 64, images.device, strength=0.05)
    composed, targets, _ = warp_face_batch(images, images, masks, shift, distortion)
    sequential = F.grid_sample(targets, distortion, mode="bilinear", padding_mode="border", align_corners=False)
    # Away from the bottom rows, where the shift brings in repeated border pixels.
    torch.testing.assert_close(composed[:, :, :48], sequential[:, :, :48], atol=1e-5, rtol=0)
    # With no geometric or colour augmentation the input is exactly the elastic warp of the image.
    still = AugmentConfig(rotation_deg=0, scale=0, shift=0, perspective=0, brightness=0, contrast=0, channel_gain=0,
                          sharpen=0)
    generator = torch.Generator().manual_seed(4)
    inputs, targets, _ = augment_batch(images, masks, generator, still)
    replay = torch.Generator().manual_seed(4)
    random_homography(replay, 6, 0, 0, 0, 0)  # the same draws, in the same order
    assert torch.equal(targets, images)
    assert torch.equal(inputs, elastic_warp(images, replay, still.elastic_strength, still.elastic_cells))


def test_augment_batch_is_deterministic_per_seed():
    images, masks = face_tensors(64)
    config = AugmentConfig(brightness=0.1, contrast=0.1, channel_gain=0.05)
    first = augment_batch(images, masks, torch.Generator().manual_seed(11), config)
    again = augment_batch(images, masks, torch.Generator().manual_seed(11), config)
    other = augment_batch(images, masks, torch.Generator().manual_seed(12), config)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], other[1])


def test_colour_jitter_is_the_same_on_input_and_target():
    images, masks = face_tensors(64)
    config = AugmentConfig(elastic_strength=0.0, brightness=0.2, contrast=0.2, channel_gain=0.1, sharpen=0.0)
    inputs, targets, _ = augment_batch(images, masks, torch.Generator().manual_seed(2), config)
    plain = augment_batch(images, masks, torch.Generator().manual_seed(2), AugmentConfig(elastic_strength=0.0, sharpen=0.0))[1]
    assert torch.equal(inputs, targets)
    assert (targets - plain).abs().mean() > 0.01


def test_sharpen_is_facefusions_sharpening():
    """The float sharpening equals FaceFusion's on uint8 crops (facepipe.evaluate's copy of its
    feeding) to within its 8-bit rounding, borders included."""
    crops, _ = hopper_faces()
    small = resize_crops(crops, 96)
    ours = sharpen(torch.from_numpy(small).permute(0, 3, 1, 2).float() / 255).permute(0, 2, 3, 1).numpy() * 255
    theirs = np.stack([facefusion_sharpen(crop) for crop in small]).astype(np.float64)
    assert np.abs(ours - theirs).max() <= 2.0
    assert np.abs(ours - theirs).mean() < 0.5
    assert np.abs(theirs - small).mean() > 1.0  # and it does change the crop


def test_sharpening_goes_to_a_share_of_the_inputs_only_and_is_drawn_last():
    images, masks = face_tensors(64)
    geometric_off = dict(rotation_deg=0, scale=0, shift=0, perspective=0, elastic_strength=0, brightness=0,
                         contrast=0, channel_gain=0)
    inputs, targets, _ = augment_batch(images, masks, torch.Generator().manual_seed(3), AugmentConfig(**geometric_off, sharpen=1.0))
    assert torch.equal(targets, images) and torch.equal(inputs, sharpen(images))
    kinds = set()
    for seed in range(4):
        with_sharpening = augment_batch(images, masks, torch.Generator().manual_seed(seed), AugmentConfig(sharpen=0.5))
        without = augment_batch(images, masks, torch.Generator().manual_seed(seed), AugmentConfig(sharpen=0.0))
        # Drawn after everything else: targets and masks are the same, each input is either the
        # unsharpened one or its sharpening.
        assert torch.equal(with_sharpening[1], without[1]) and torch.equal(with_sharpening[2], without[2])
        for got, plain in zip(with_sharpening[0], without[0]):
            same = torch.equal(got, plain)
            assert same or torch.equal(got, sharpen(plain[None])[0])
            kinds.add(same)
    assert kinds == {True, False}


def test_mirroring_goes_to_a_share_of_the_faces_and_is_drawn_last():
    images, masks = face_tensors(64)
    geometric_off = dict(rotation_deg=0, scale=0, shift=0, perspective=0, elastic_strength=0, brightness=0,
                         contrast=0, channel_gain=0)
    inputs, targets, target_masks = augment_batch(images, masks, torch.Generator().manual_seed(3),
                                                  AugmentConfig(**geometric_off, flip=1.0))
    torch.testing.assert_close(targets, images.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(target_masks, masks.flip(-1), atol=1e-5, rtol=0)
    assert torch.equal(inputs, targets)
    kinds = set()
    for seed in range(4):
        with_mirroring = augment_batch(images, masks, torch.Generator().manual_seed(seed), AugmentConfig(flip=0.5))
        without = augment_batch(images, masks, torch.Generator().manual_seed(seed), AugmentConfig(flip=0.0))
        # Drawn after everything else: targets and masks are the unmirrored ones or their mirror
        # images (the input's elastic warp is not mirrored with them).
        for got_all, plain_all in zip(with_mirroring[1:], without[1:]):
            for got, plain in zip(got_all, plain_all):
                same = torch.equal(got, plain)
                if not same:
                    torch.testing.assert_close(got, plain.flip(-1), atol=1e-5, rtol=0)
                kinds.add(same)
    assert kinds == {True, False}


def laplacian_variance(images: torch.Tensor) -> float:
    """Median over the batch of the variance of the Laplacian of the grey face (0-255 units)."""
    grey = (images.permute(0, 2, 3, 1).double().numpy() * 255).mean(axis=-1)
    return float(np.median([cv2.Laplacian(face, cv2.CV_64F).var() for face in grey]))


def warped_as_the_runtimes(crops: np.ndarray, size: int) -> np.ndarray:
    """Stored crops [N, S0, S0, 3] warped straight to ``size`` with OpenCV's warpAffine, bilinear (what
    FaceFusion and DeepFaceLive call on a frame), as float64: the reference for a runtime's cut. The
    pixel centres of the model-size crop, in the stored crop's pixels: x_s = s·x + (s - 1)/2."""
    s = crops.shape[1] / size
    to_stored = np.float64([[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2]])
    return np.stack([cv2.warpAffine(crop, to_stored, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REPLICATE) for crop in crops]).astype(np.float64)


def test_a_runtime_crop_is_read_from_the_stored_crop_as_the_runtimes_warp_a_frame():
    """An input cut as the runtimes cut it is the stored 256 px crop warped straight to the model's
    size, bilinear, as OpenCV's warpAffine does it (what FaceFusion and DeepFaceLive call), not the
    INTER_AREA shrink the targets come from, and it is sharper than that shrink."""
    crops, masks = hopper_faces()
    images, mask_tensor = face_tensors(96)
    geometric_off = dict(rotation_deg=0, scale=0, shift=0, perspective=0, elastic_strength=0, brightness=0,
                         contrast=0, channel_gain=0)
    sources = stored_faces(crops)
    assert sources.dtype == torch.uint8 and sources.shape == (6, 3, 256, 256)
    inputs, targets, _ = augment_batch(images, mask_tensor, torch.Generator().manual_seed(0),
                                       AugmentConfig(**geometric_off, runtime_crop=1.0), sources=sources)
    torch.testing.assert_close(targets, images, atol=1e-5, rtol=0)
    warped = warped_as_the_runtimes(crops, 96)
    ours = inputs.permute(0, 2, 3, 1).numpy() * 255
    assert np.abs(ours - warped).mean() < 0.5 and np.abs(ours - warped).max() < 4  # OpenCV's 5-bit weights (half a pixel off: 9)
    assert np.abs(ours - resize_crops(crops, 96)).mean() > 1.0  # not the shrink
    assert laplacian_variance(inputs) > 1.5 * laplacian_variance(images)


def test_runtime_crops_go_to_a_share_of_the_inputs_only_and_are_drawn_last():
    crops, _ = hopper_faces()
    images, masks = face_tensors(64)
    sources = stored_faces(crops)
    kinds = set()
    for seed in range(4):
        cut = augment_batch(images, masks, torch.Generator().manual_seed(seed), AugmentConfig(runtime_crop=0.5, flip=0.5),
                            sources=sources)
        every = augment_batch(images, masks, torch.Generator().manual_seed(seed), AugmentConfig(runtime_crop=1.0, flip=0.5),
                              sources=sources)
        without = augment_batch(images, masks, torch.Generator().manual_seed(seed), AugmentConfig(flip=0.5), sources=sources)
        # Drawn after everything else: targets and masks are the same; each input is the shrink's
        # or the one read from the stored crop through the same warp.
        assert torch.equal(cut[1], without[1]) and torch.equal(cut[2], without[2])
        for got, plain, runtime in zip(cut[0], without[0], every[0]):
            same = torch.equal(got, plain)
            assert same or torch.equal(got, runtime)
            kinds.add(same)
        # The same warp (homography, elastic warp, mirroring) whichever crop it reads.
        assert (every[0] - without[0]).abs().mean() < 0.05
    assert kinds == {True, False}
    # Without the stored crops there is nothing to cut from: the shrink's inputs, the same draws.
    alone = augment_batch(images, masks, torch.Generator().manual_seed(0), AugmentConfig(runtime_crop=1.0))
    plain = augment_batch(images, masks, torch.Generator().manual_seed(0), AugmentConfig())
    assert all(torch.equal(a, b) for a, b in zip(alone, plain))


# ---------------------------------------------------------------------------------------------
# Losses


def test_dssim_of_identical_images_is_zero_and_grows_with_damage():
    images, _ = face_tensors(64)
    assert abs(float(dssim(images, images))) < 1e-6
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    damage = [float(dssim(images, (images + level * noise).clamp(0, 1))) for level in (0.02, 0.05, 0.1)]
    assert 0 < damage[0] < damage[1] < damage[2] <= 1, damage
    blurred = F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
    assert 0 < float(dssim(images, blurred)) <= 1
    assert abs(float(gaussian_taps(SSIM_WINDOW, SSIM_SIGMA).sum()) - 1) < 1e-12


def test_ssim_matches_scikit_image():
    """Same definition as skimage's gaussian SSIM (sigma 1.5, 11 px window, population stats)."""
    images, _ = face_tensors(64)
    x, y = images[0:1], images[1:2]
    reference = structural_similarity(
        x[0].permute(1, 2, 0).double().numpy(),
        y[0].permute(1, 2, 0).double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=-1,
    )
    assert abs((1 - 2 * float(dssim(x, y))) - reference) < 1e-4


def test_ssim_is_the_same_to_the_bit_whatever_layout_its_inputs_come_in():
    """The statistics are blurred in channels-last layout (faster); a model's channels-last output
    and a plain target give the same map and gradient as plain tensors do."""
    images, _ = face_tensors(64)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        x = images[0:1].clone().contiguous(memory_format=layout).requires_grad_()
        value = dssim(x, images[1:2])
        value.backward()
        results.append((value.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_reconstruction_loss_matches_manual_computation():
    generator = torch.Generator().manual_seed(0)
    images, masks = face_tensors(64)
    pred = torch.rand(images.shape, generator=generator)
    logits = torch.randn(masks.shape, generator=generator) * 3
    weights = LossWeights(l1=2.0, dssim=0.5, mask=3.0)
    total, parts = reconstruction_loss(pred, logits, images, masks, weights)

    p, t, m, z = pred.double(), images.double(), masks.double(), logits.double()
    manual_l1 = ((p - t).abs() * m).sum() / (m.sum() * 3)
    probability = torch.sigmoid(z)  # the one sigmoid
    manual_bce = -(m * torch.log(probability) + (1 - m) * torch.log(1 - probability)).mean()
    manual_dssim = dssim(pred * masks, images * masks).double()
    manual_total = 2.0 * manual_l1 + 0.5 * manual_dssim + 3.0 * manual_bce
    assert abs(float(parts["l1"]) - float(manual_l1)) < 1e-5
    assert abs(float(parts["mask"]) - float(manual_bce)) < 1e-5
    assert abs(float(parts["dssim"]) - float(manual_dssim)) < 1e-6
    assert abs(float(total) - float(manual_total)) < 1e-4
    assert float(parts["total"]) == float(total)
    # Feeding probabilities where logits belong (a second sigmoid) gives a different loss.
    _, double_sigmoid = reconstruction_loss(pred, torch.sigmoid(logits), images, masks, weights)
    assert abs(float(double_sigmoid["mask"]) - float(manual_bce)) > 0.05


def test_reconstruction_loss_gradients_under_fp16_autocast_match_fp32():
    """CUDA trains under fp16 autocast, which runs convolutions (the SSIM window among them) in
    fp16; there a variance cancelled below zero and every step's gradients were NaN. The CPU's
    fp16 autocast casts convolutions alike, so the loss is checked under it here."""
    images, masks = face_tensors(64)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():  # a near-identity layer: the "prediction" is the face, slightly off
        conv.weight.copy_(torch.eye(3)[:, :, None, None] * F.pad(torch.ones(1, 1, 1, 1), (1, 1, 1, 1)) * 0.9)
        conv.bias.fill_(0.05)
    logits = torch.zeros_like(masks)

    def gradients(autocast: bool):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            total, _ = reconstruction_loss(torch.sigmoid(conv(images) * 4 - 2), logits, images, masks)
        total.backward()
        return torch.cat([conv.weight.grad.flatten(), conv.bias.grad])

    plain, mixed = gradients(False), gradients(True)
    assert torch.isfinite(mixed).all(), mixed
    torch.testing.assert_close(mixed, plain, rtol=0.05, atol=1e-3)


def test_masked_l1_ignores_the_background():
    images, masks = face_tensors(64)
    pred = images.clone()
    pred[masks.expand_as(pred) == 0] = 1.0 - pred[masks.expand_as(pred) == 0]
    assert float(masked_l1(pred, images, (masks == 1).float())) == 0.0
    assert float(masked_l1(pred, images, torch.zeros_like(masks))) == 0.0  # empty mask: 0, not NaN
    assert math.isfinite(float(masked_l1(pred, images, torch.ones_like(masks))))


def test_adaptable_layers_name_the_conv_and_linear_layers_of_each_part():
    model = IdentityAutoencoder()
    shared = adaptable_layers(model, ("encoder", "bottleneck"))
    decoder = adaptable_layers(model, ("decoder",))
    assert shared == sorted(shared) and "bottleneck.to_latent" in shared and "encoder.layers.0" in shared
    assert all(name.startswith("decoder.") for name in decoder) and "decoder.to_mask" in decoder
    modules = dict(model.named_modules())
    assert all(isinstance(modules[name], (nn.Conv2d, nn.Linear)) for name in shared + decoder)
    weighted = {name for name, module in modules.items() if list(module.parameters(recurse=False))}
    assert set(shared + decoder) == weighted  # every weight is reachable by one of the two sets
    with pytest.raises(ValueError, match="no part"):
        adaptable_layers(model, ("encoderr",))


# ---------------------------------------------------------------------------------------------
# Eyes-and-mouth priority


def test_feature_masks_cover_the_eyes_and_mouth_and_not_the_rest_of_the_face():
    crops, masks, landmarks = hopper_aligned()
    features = feature_masks(landmarks, STORED_SIZE, 96)
    assert features.shape == (6, 96, 96) and features.dtype == np.uint8 and set(np.unique(features)) <= {0, 255}
    points = np.round(landmarks * 96 / STORED_SIZE).astype(int)
    for face, marks in zip(features, points):
        inside = [face[y, x] for x, y in marks[[i for region in (*EYE_CONTOURS, LIPS) for i in region]]]
        assert min(inside) == 255  # every eye-contour and lip point
        nose_tip, chin, cheek = marks[1], marks[152], marks[205]
        assert face[nose_tip[1], nose_tip[0]] == 0 and face[chin[1], chin[0]] == 0 and face[cheek[1], cheek[0]] == 0
    share = features.mean() / 255
    assert 0.03 < share < 0.15, share  # a few features, not the face (the hull covers ~half the crop)
    assert (features[resize_crops(masks, 96) == 0] == 0).mean() > 0.99  # inside the face


def test_the_eyes_and_mouth_term_weighs_only_those_regions():
    images, masks = face_tensors(64)
    _crops, _masks, landmarks = hopper_aligned()
    features = torch.from_numpy(feature_masks(landmarks, STORED_SIZE, 64)).unsqueeze(1).float() / 255
    logits = (masks * 20 - 10)
    plain, _ = reconstruction_loss(images, logits, images, masks)
    off_feature = images.clone()
    off_feature[(features == 0).expand_as(images) & (masks == 1).expand_as(images)] += 0.2
    mouth = images.clone()
    mouth[(features == 1).expand_as(images)] += 0.2
    weights = LossWeights(eyes_mouth=1.0)
    _, outside = reconstruction_loss(off_feature, logits, images, masks, weights, features)
    _, inside = reconstruction_loss(mouth, logits, images, masks, weights, features)
    assert float(outside["eyes_mouth"]) == 0.0  # an error elsewhere on the face is the plain loss's business
    assert abs(float(inside["eyes_mouth"]) - 0.2) < 1e-5  # mean error over the regions alone
    # per pixel, an eye or mouth error now costs several times a cheek error
    _, inside_plain = reconstruction_loss(mouth, logits, images, masks)
    assert float(inside["total"]) - float(inside_plain["total"]) > 0.19
    _, unweighted = reconstruction_loss(mouth, logits, images, masks, LossWeights(), features)
    assert "eyes_mouth" not in unweighted and float(unweighted["total"]) == float(inside_plain["total"])


def test_feature_masks_are_warped_with_the_face_and_change_no_other_output():
    images, masks = face_tensors(64)
    features = torch.rand(masks.shape, generator=torch.Generator().manual_seed(1))
    config = AugmentConfig()
    plain = augment_batch(images, masks, torch.Generator().manual_seed(5), config)
    *with_features, warped = augment_with_features(images, masks, features, torch.Generator().manual_seed(5), config)
    for a, b in zip(plain, with_features):
        assert torch.equal(a, b)
    # the same homography: features stacked as a mask warp exactly like one
    alone = augment_batch(images, features, torch.Generator().manual_seed(5), config)[2]
    assert torch.equal(warped, alone)
    assert augment_with_features(images, masks, None, torch.Generator().manual_seed(5), config)[3] is None


def test_augmentation_warps_in_float32_under_autocast_and_on_the_device_asked():
    # The engine computes the loss under fp16 autocast on a GPU and each task augments its batch there;
    # fp16 grid coordinates would put the warps ~0.1 px off (the CPU's fp16 autocast stands in for CUDA's).
    images, masks = face_tensors(64)
    features = torch.rand(masks.shape, generator=torch.Generator().manual_seed(1))
    config = AugmentConfig(flip=0.5, sharpen=0.5)
    plain = augment_with_features(images, masks, features, torch.Generator().manual_seed(5), config)
    with torch.autocast("cpu", dtype=torch.float16):
        autocast = augment_with_features(images, masks, features, torch.Generator().manual_seed(5), config, device="cpu")
    for a, b in zip(plain, autocast):
        assert b.dtype == torch.float32 and b.device.type == "cpu" and torch.equal(a, b)
