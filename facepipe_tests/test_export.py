"""ONNX export: determinism, parity with torch on real crops, the DFM convention, sidecars."""

from __future__ import annotations

import hashlib
import json
import zlib

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_models import hopper_faces
from torch import nn

from facepipe.export import (
    OnnxParityError,
    MORPH_CHECK_VALUES,
    export_dfm,
    export_onnx,
    verify_onnx,
    write_hash_sidecar,
    write_model_card,
)
from facepipe.faces import resize_crops
from facepipe.models.autoencoder import AutoencoderConfig, IdentityAutoencoder
from facepipe.models.pair import AdapterConfig, MergedPair, PairModel, adapter_state, merge_adapters
from facepipe.models.pose import MASK_POOL, MaskYawReadout, PointPoseReader, PoseReader
from facepipe.evaluate import sharpness
from facepipe.models.swap import (DFM_INPUT, DFM_MORPH_INPUT, DFM_OUTPUTS, DfmSwapModel, dfm_input, fill_outside_mask,
                                   unsharp)

SIZE = 96  # the CPU default


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def real_crops(size: int = SIZE) -> np.ndarray:
    """Real aligned Grace Hopper crops (MediaPipe + facepipe.align), BGR uint8 [6, size, size, 3]."""
    crops, masks = hopper_faces()
    return resize_crops(crops, size)


def identity_model(seed: int, size: int = SIZE) -> IdentityAutoencoder:
    torch.manual_seed(seed)
    return IdentityAutoencoder(AutoencoderConfig(size=size)).eval()


def nchw_cases(crops: np.ndarray) -> list[list[np.ndarray]]:
    return [[crop.transpose(2, 0, 1)[None].astype(np.float32) / 255.0] for crop in crops]


def export_autoencoder(model: nn.Module, path) -> None:
    example = torch.from_numpy(nchw_cases(real_crops()[:1])[0][0])
    export_onnx(model, [example], path, ["bgr"], ["out_bgr", "out_mask_logits"])


# ---------------------------------------------------------------------------------------------
# Generic export


def test_export_is_byte_identical_for_the_same_weights(tmp_path):
    model = identity_model(0)
    export_autoencoder(model, tmp_path / "first.onnx")
    export_autoencoder(model, tmp_path / "second.onnx")
    rebuilt = identity_model(1)  # other initial weights, then the same state loaded
    rebuilt.load_state_dict(model.state_dict())
    export_autoencoder(rebuilt, tmp_path / "rebuilt.onnx")
    export_autoencoder(identity_model(2), tmp_path / "other.onnx")

    first = (tmp_path / "first.onnx").read_bytes()
    assert first == (tmp_path / "second.onnx").read_bytes() == (tmp_path / "rebuilt.onnx").read_bytes()
    assert first != (tmp_path / "other.onnx").read_bytes()
    assert str(tmp_path).encode() not in first
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries

    loaded = onnx.load_from_string(first)
    assert [o.version for o in loaded.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in loaded.graph.input] == ["bgr"]
    assert all(d.dim_value > 0 for d in loaded.graph.input[0].type.tensor_type.shape.dim)  # static shapes
    assert not any(node.doc_string for node in loaded.graph.node)


def test_export_restores_training_mode(tmp_path):
    model = identity_model(0).train()
    export_autoencoder(model, tmp_path / "model.onnx")
    assert model.training


def test_verify_onnx_matches_torch_on_real_crops(tmp_path):
    model = identity_model(0)
    path = tmp_path / "model.onnx"
    export_autoencoder(model, path)
    error = verify_onnx(path, model, nchw_cases(real_crops()))
    assert 0 <= error < 1e-4


def test_verify_onnx_fails_when_the_file_is_not_the_model(tmp_path):
    path = tmp_path / "model.onnx"
    export_autoencoder(identity_model(0), path)
    with pytest.raises(OnnxParityError, match=r"model\.onnx: output out_bgr differs from torch"):
        verify_onnx(path, identity_model(1), nchw_cases(real_crops()[:2]))
    with pytest.raises(ValueError, match="no input cases"):
        verify_onnx(path, identity_model(0), [])


# ---------------------------------------------------------------------------------------------
# DFM convention


def deep_swapper_forward(session: ort.InferenceSession, crop_bgr: np.ndarray, morph_percent: int = 100
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What FaceFusion's deep_swapper processor does with a custom .dfm (facefusion/processors/
    modules/deep_swapper/core.py): model size from the `in_face:0` input, the aligned uint8 BGR
    crop sharpened, scaled to [0, 1], batched as NHWC float32; inputs fed by name (`morph_value:0`
    = morph / 100 when the model has it), three outputs unpacked in order."""
    model_size = next(i.shape[1:3] for i in session.get_inputs() if i.name == "in_face:0")
    assert list(crop_bgr.shape[:2]) == list(model_size)
    sharpened = cv2.addWeighted(crop_bgr, 1.75, cv2.GaussianBlur(crop_bgr, (0, 0), 2), -0.75, 0)
    feed = {}
    for model_input in session.get_inputs():
        if model_input.name == "in_face:0":
            feed[model_input.name] = np.expand_dims(sharpened / 255.0, axis=0).astype(np.float32)
        if model_input.name == "morph_value:0":
            feed[model_input.name] = np.array([np.interp(morph_percent, [0, 100], [0, 1])]).astype(np.float32)
    crop_target_mask, crop_frame, crop_source_mask = session.run(None, feed)
    swapped = (crop_frame[0] * 255.0).clip(0, 255).astype(np.uint8)
    mask = np.minimum.reduce([crop_source_mask[0], crop_target_mask[0]]).reshape(model_size).clip(0, 1)
    mask = cv2.GaussianBlur(cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)), iterations=2), (0, 0), 6.25)
    return swapped, mask, feed["in_face:0"]


def deepfacelive_convert(session: ort.InferenceSession, crop_bgr: np.ndarray, morph_factor: float = 0.75) -> list[np.ndarray]:
    """What DeepFaceLive's DFMModel does (modelhub/DFLive/DFMModel.py): refuses a model whose
    first input's name lacks `in_face`, or whose second lacks `morph_value`, or with more than two;
    feeds the crop as uint8 / 255 (no sharpening) and, for a two-input model, the morph factor
    (its control starts at 0.75); outputs by position."""
    inputs = session.get_inputs()
    assert "in_face" in inputs[0].name and len(inputs) <= 2
    feed = {"in_face:0": crop_bgr[None].astype(np.float32) / 255.0}
    if len(inputs) == 2:
        assert "morph_value" in inputs[1].name
        feed["morph_value:0"] = np.float32([morph_factor])
    return session.run(None, feed)


def random_merged_pair(size: int = 48, seed: int = 0, swap_gain: float = 1.0, pose_reading: str | None = None,
                       mouth: bool = False) -> MergedPair:
    """A pair model with random (non-zero) LoRA deltas and swap latent offset (and, with a
    ``pose_reading``, a pose reader of that kind; with ``mouth``, a mouth reader; and their
    directions), merged: its two paths differ, as a trained pair's do, without training one."""
    torch.manual_seed(seed)
    base = IdentityAutoencoder(AutoencoderConfig(size=size, width=8, latent_dim=64, depth=3)).eval()
    adapter = AdapterConfig(rank=2, alpha=4.0, swap_gain=swap_gain)
    pair = PairModel(base, adapter)
    with torch.no_grad():
        for name, parameter in pair.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
        pair.swap_latent_offset.normal_(0, 0.5)
        reader, rows = None, 0
        if pose_reading == "crop":
            reader, rows = PointPoseReader.empty(size), 2
            reader.pose.scale.fill_(10.0)  # degrees
            reader.requires_grad_(False).eval()
        elif pose_reading == "mask":
            reader, rows = MaskYawReadout((size // MASK_POOL) ** 2), 1
            reader.weights.normal_(0, 3.0)  # degrees per unit of mask
        mouth_reader = None
        if mouth:
            mouth_reader = PoseReader(size, outputs=1).requires_grad_(False).eval()
            mouth_reader.scale.fill_(100.0)  # its one random output reads little; the swap must move visibly
        if reader is not None or mouth:
            pair.attach_pose_follow(reader, torch.randn(rows + mouth, 64) * 0.05, mouth_reader)
    return merge_adapters(base, adapter_state(pair), adapter)


def test_dfm_export_names_order_and_facefusion_style_run(tmp_path):
    model = DfmSwapModel.from_autoencoders(identity_model(0))
    crops = real_crops()
    exported = export_dfm(model, SIZE, tmp_path / "hopper.dfm", crops, card={"name": "hopper"})
    assert exported.max_abs_error < 1e-4

    session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [(DFM_INPUT, [1, SIZE, SIZE, 3], "tensor(float)")]
    assert [o.name for o in session.get_outputs()] == list(DFM_OUTPUTS)
    assert [o.shape for o in session.get_outputs()] == [[1, SIZE, SIZE, 1], [1, SIZE, SIZE, 3], [1, SIZE, SIZE, 1]]

    swapped, mask, fed = deep_swapper_forward(session, crops[2])
    assert swapped.shape == (SIZE, SIZE, 3) and swapped.dtype == np.uint8
    assert mask.shape == (SIZE, SIZE) and 0 <= mask.min() and mask.max() <= 1
    with torch.no_grad():
        face_mask, celeb_face, celeb_mask = (t.numpy() for t in model(torch.from_numpy(fed)))
    runtime_outputs = session.run(None, {DFM_INPUT: fed})
    for ours, theirs in zip((face_mask, celeb_face, celeb_mask), runtime_outputs):
        np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    # Without a mask source the input-face mask is the model's own predicted silhouette.
    np.testing.assert_array_equal(runtime_outputs[0], runtime_outputs[2])


def test_dfm_swaps_encoder_and_decoder_of_two_models():
    encoding, decoding = identity_model(0), identity_model(1)
    swap = DfmSwapModel.from_autoencoders(encoding, decoding).eval()
    face = torch.from_numpy(dfm_input(real_crops()[0]))
    with torch.no_grad():
        _, celeb_face, celeb_mask = swap(face)
        expected_face, expected_logits = decoding.decode(encoding.encode(face.permute(0, 3, 1, 2)))
    torch.testing.assert_close(celeb_face, expected_face.permute(0, 2, 3, 1), atol=0, rtol=0)
    torch.testing.assert_close(celeb_mask, torch.sigmoid(expected_logits).permute(0, 2, 3, 1), atol=0, rtol=0)


class GreenChannelMask(nn.Module):
    """A stand-in occlusion mask source with a known output: the input's green channel."""

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        return bgr[:, 1:2]


def test_dfm_face_mask_comes_from_the_supplied_source(tmp_path):
    model = DfmSwapModel.from_autoencoders(identity_model(0), face_mask_source=GreenChannelMask())
    crops = real_crops()
    exported = export_dfm(model, SIZE, tmp_path / "masked.dfm", crops[:2])
    session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
    face_mask = session.run(None, {DFM_INPUT: dfm_input(crops[0])})[0]
    np.testing.assert_allclose(face_mask[0, :, :, 0], crops[0][:, :, 1] / 255.0, atol=1e-6)


class BackdropPainter(nn.Module):
    """A stand-in decoder with a known output: a red face on a disc (the mask), a blue backdrop
    around it and a one-pixel blue rim just inside the disc's edge, as a decoder trained on a
    face filmed before a blue backdrop paints it."""

    def __init__(self, size: int):
        super().__init__()
        y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        radius = ((x - size / 2 + 0.5) ** 2 + (y - size / 2 + 0.5) ** 2).sqrt()
        disc = (radius < size / 3).float()
        rim = ((radius < size / 3) & (radius >= size / 3 - 1)).float()
        face = torch.stack([torch.full_like(disc, 0.1), torch.full_like(disc, 0.3), torch.full_like(disc, 0.8)])  # BGR red
        backdrop = torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1).expand(3, size, size)  # BGR blue
        inside = disc - rim
        self.register_buffer("bgr", (face * inside + backdrop * (1 - inside))[None])
        self.register_buffer("logits", (disc * 20 - 10)[None, None])

    def forward(self, code: torch.Tensor):
        still = 0 * code.mean()  # keeps the input in the exported graph
        return self.bgr + still, self.logits + still


def test_a_filled_background_carries_the_faces_colours_not_the_backdrop(tmp_path):
    size = SIZE  # the fill erodes the mask by 2 px at 96: the 1-px rim goes
    painter = BackdropPainter(size)
    plain = DfmSwapModel(nn.Flatten(), painter).eval()
    filled = DfmSwapModel(nn.Flatten(), painter, fill_background=True).eval()
    face = torch.from_numpy(dfm_input(real_crops(size)[0]))
    with torch.no_grad():
        _, raw, raw_mask = plain(face)
        _, out, out_mask = filled(face)
    torch.testing.assert_close(out_mask, raw_mask, atol=0, rtol=0)  # the masks are untouched
    red = torch.tensor([0.1, 0.3, 0.8])
    inside = painter.logits[0, 0] > 0
    core = -torch.nn.functional.max_pool2d(-inside[None, None].float(), 7, stride=1, padding=3)[0, 0] > 0
    torch.testing.assert_close(out[0][core], raw[0][core], atol=0, rtol=0)  # the face itself is kept
    assert (raw[0][~inside] - torch.tensor([0.9, 0.2, 0.1])).abs().max() < 1e-6  # the decoder's backdrop ...
    assert (out[0][~core] - red).abs().max() < 1e-4  # ... and its rim become the face's own colour
    exported = export_dfm(filled, size, tmp_path / "filled.dfm", real_crops(size)[:2])  # and it exports as it runs
    session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {DFM_INPUT: face.numpy()})[1], out.numpy(), atol=1e-5)


class Painter(nn.Module):
    """A 'decoder' that paints the input face itself under an all-face mask."""

    def forward(self, bgr: torch.Tensor):
        return bgr, torch.full_like(bgr[:, :1], 10.0)


def test_the_exported_face_gets_the_unsharp_mask_it_is_given(tmp_path):
    crops = real_crops()[:2]
    faces = torch.from_numpy(np.concatenate([dfm_input(crop) for crop in crops]))
    plain = DfmSwapModel(nn.Identity(), Painter()).eval()
    sharpened = DfmSwapModel(nn.Identity(), Painter(), sharpen=0.5).eval()
    with torch.no_grad():
        _, as_painted, _ = plain(faces)
        _, out, _ = sharpened(faces)
    torch.testing.assert_close(as_painted, faces, atol=0, rtol=0)  # amount 0: nothing changes
    # the unsharp mask written out with OpenCV: 1.5 face - 0.5 blur (sigma 1 px at 96, border repeated)
    for crop, face in zip(crops, out.numpy()):
        image = crop.astype(np.float64) / 255
        blurred = cv2.GaussianBlur(image, (7, 7), 1.0, borderType=cv2.BORDER_REPLICATE)
        np.testing.assert_allclose(face, np.clip(1.5 * image - 0.5 * blurred, 0, 1), atol=1e-5)
    as_uint8 = (out.numpy() * 255).round().astype(np.uint8)
    assert (sharpness(as_uint8) > 1.3 * sharpness(crops)).all()
    torch.testing.assert_close(unsharp(faces.permute(0, 3, 1, 2), 0.5), out.permute(0, 3, 1, 2))
    exported = export_dfm(sharpened, SIZE, tmp_path / "sharpened.dfm", list(crops))  # in the file as in torch
    session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {DFM_INPUT: faces[:1].numpy()})[1], out[:1].numpy(), atol=1e-5)


def test_the_export_low_passes_the_crop_it_is_fed(tmp_path):
    """input_blur: what the encoder reads (and every mask source) is the crop blurred by a Gaussian
    of that sigma, the border repeated, in the file as in torch; it softens a sharp crop."""
    crops = real_crops()[:2]
    faces = torch.from_numpy(np.concatenate([dfm_input(crop) for crop in crops]))
    blurring = DfmSwapModel(nn.Identity(), Painter(), input_blur=0.7).eval()
    with torch.no_grad():
        face_mask, out, _ = blurring(faces)
    # written out with OpenCV: sigma 0.7 px, 3 sigma rounded (2 px) a side, border repeated
    for crop, face in zip(crops, out.numpy()):
        image = crop.astype(np.float64) / 255
        np.testing.assert_allclose(face, cv2.GaussianBlur(image, (5, 5), 0.7, borderType=cv2.BORDER_REPLICATE), atol=1e-5)
    as_uint8 = (out.numpy() * 255).round().astype(np.uint8)
    assert (sharpness(as_uint8) < 0.7 * sharpness(crops)).all()
    exported = export_dfm(blurring, SIZE, tmp_path / "blurring.dfm", list(crops))
    session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {DFM_INPUT: faces[:1].numpy()})[1], out[:1].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="input_blur"):
        DfmSwapModel(nn.Identity(), Painter(), input_blur=-0.5)


def test_the_exported_face_takes_its_colour_gain_by_the_morph_share(tmp_path):
    """colour_gain multiplies the painted face's channels (clipped to [0, 1]) before the fill: fully
    at morph 1, not at all at morph 0 (the target's own face), by the share between; in the file as
    in torch."""
    merged = random_merged_pair()
    crops = real_crops(48)
    gain = (1.3, 0.8, 1.1)
    plain, toned = merged.dfm_model(), merged.dfm_model(colour_gain=gain)
    face = torch.from_numpy(dfm_input(crops[3]))
    with torch.no_grad():
        for morph in (0.0, 0.5, 1.0):
            share = torch.tensor([morph])
            _, painted, mask = plain(face, share)
            _, out, toned_mask = toned(face, share)
            torch.testing.assert_close(toned_mask, mask, atol=0, rtol=0)  # the masks are untouched
            factors = 1 + morph * (torch.tensor(gain) - 1)
            # the painted face (before its fill), scaled, then filled as before
            raw, logits = plain.decoder_part(plain.encoder_part(face.permute(0, 3, 1, 2)), share)
            expected = fill_outside_mask((raw * factors.view(1, 3, 1, 1)).clamp(0, 1), torch.sigmoid(logits))
            torch.testing.assert_close(out, expected.permute(0, 2, 3, 1), atol=1e-6, rtol=0)
            if morph == 0.0:
                torch.testing.assert_close(out, painted, atol=1e-6, rtol=0)
            else:
                assert (out - painted).abs().max() > 1e-2
    exported = export_dfm(toned, 48, tmp_path / "toned.dfm", crops[:2])  # checked at morph 0, 0.5 and 1
    assert exported.max_abs_error < 1e-4


class TraceBreakingSwap(nn.Module):
    """Data-dependent Python control flow: the trace keeps the branch the example input took,
    so the exported file does not reproduce the module on other crops."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, in_face: torch.Tensor):
        mask = in_face[..., :1]
        if float(in_face.mean()) > self.threshold:
            return mask, in_face, mask
        return mask, 1.0 - in_face, mask


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the warning about exactly this
def test_export_dfm_removes_a_model_that_fails_parity(tmp_path):
    crops = real_crops()
    means = sorted(float(crop.mean()) / 255.0 for crop in crops[:2])
    assert means[0] != means[1]
    broken = TraceBreakingSwap(threshold=(means[0] + means[1]) / 2)
    with pytest.raises(OnnxParityError, match="broken.dfm"):
        export_dfm(broken, SIZE, tmp_path / "broken.dfm", crops[:2])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("swap_gain, pose_reading, mouth", [(1.0, None, False), (1.5, "crop", False), (1.5, "mask", False),
                                                          (1.5, None, True), (1.5, "crop", True), (1.5, "mask", True)])
def test_pair_export_has_morph_value_from_the_target_face_to_the_swap(swap_gain, pose_reading, mouth, tmp_path):
    merged = random_merged_pair(swap_gain=swap_gain, pose_reading=pose_reading, mouth=mouth)
    crops = real_crops(48)
    exported = export_dfm(merged.dfm_model(), 48, tmp_path / "pair.dfm", crops[:2])
    assert exported.max_abs_error < 1e-4  # checked in onnxruntime at each of 0, 0.5, 1
    assert MORPH_CHECK_VALUES == (0.0, 0.5, 1.0)
    session = ort.InferenceSession(str(exported.model_path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [
        (DFM_INPUT, [1, 48, 48, 3], "tensor(float)"), (DFM_MORPH_INPUT, [1], "tensor(float)")]
    assert [o.name for o in session.get_outputs()] == list(DFM_OUTPUTS)
    card = json.loads(exported.card_path.read_text())
    assert [i["name"] for i in card["inputs"]] == [DFM_INPUT, DFM_MORPH_INPUT]
    assert card["inputs"][1]["checked_at"] == [0.0, 0.5, 1.0] and card["parity"]["num_crops"] == 2

    crop = crops[3]  # not one of the parity crops
    bgr = torch.from_numpy(dfm_input(crop)).permute(0, 3, 1, 2)
    target = merged.target_face_mask
    def swap_of(bgr):
        """The merged swap (its folded gain and offset) and, with pose_follow, the pose read off the
        input or off the mask the target path paints for it; with mouth_follow, the mouth read off the input."""
        if pose_reading is None and not mouth:
            return merged.swap(bgr)
        features = merged.swap.encoder(bgr).flatten(1)
        read = []
        if pose_reading == "crop":
            read.append(merged.pose_reader(bgr))
        elif pose_reading == "mask":
            own_latent = target.bottleneck.to_latent(features)
            read.append(merged.pose_reader(target.target_decoder(target.bottleneck.code_of(own_latent))[1]))
        if mouth:
            read.append(merged.mouth_reader(bgr))
        latent = merged.swap.bottleneck.to_latent(features) + torch.cat(read, 1) @ merged.swap_pose_directions
        return merged.swap.decode(merged.swap.bottleneck.code_of(latent))

    with torch.no_grad():
        swap_face, swap_logits = swap_of(bgr)
        if pose_reading is not None or mouth:
            assert (swap_face - merged.swap(bgr)[0]).abs().max() > 1e-3
        own_face, own_logits = target.target_decoder(target.bottleneck(target.encoder(bgr)))
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    run = {m: session.run(None, {DFM_INPUT: dfm_input(crop), DFM_MORPH_INPUT: np.float32([m])}) for m in MORPH_CHECK_VALUES}
    # 1: the swap (what the evaluation measured); 0: the target path, the target's own face; both
    # filled outside their masks.
    with torch.no_grad():
        swap_face = fill_outside_mask(swap_face, torch.sigmoid(swap_logits))
        own_face = fill_outside_mask(own_face, torch.sigmoid(own_logits))
    np.testing.assert_allclose(run[1.0][1], nhwc(swap_face), atol=1e-4, rtol=0)
    np.testing.assert_allclose(run[1.0][2], nhwc(torch.sigmoid(swap_logits)), atol=1e-4, rtol=0)
    np.testing.assert_allclose(run[0.0][1], nhwc(own_face), atol=1e-4, rtol=0)
    np.testing.assert_allclose(run[0.0][2], nhwc(torch.sigmoid(own_logits)), atol=1e-4, rtol=0)
    # Halfway is neither end, and closer to each than the ends are to each other.
    ends = np.abs(run[1.0][1] - run[0.0][1]).mean()
    assert ends > 1e-3
    for end in (0.0, 1.0):
        assert 0.05 * ends < np.abs(run[0.5][1] - run[end][1]).mean() < ends
    # The input face's mask does not depend on the morph.
    np.testing.assert_array_equal(run[0.0][0], run[1.0][0])
    # Without a morph value (the evaluation's swap_faces) the torch model is the full swap.
    with torch.no_grad():
        np.testing.assert_allclose(merged.dfm_model()(torch.from_numpy(dfm_input(crop)))[1].numpy(), run[1.0][1], atol=1e-4)

    # As the runtimes detect and feed it: FaceFusion by name at --deep-swapper-morph / 100,
    # DeepFaceLive by position at its morph control's value.
    swapped, _, _ = deep_swapper_forward(session, crop, morph_percent=100)
    with torch.no_grad():
        face, logits = swap_of(torch.from_numpy(deep_swapper_forward(session, crop)[2]).permute(0, 3, 1, 2))
        sharpened = fill_outside_mask(face, torch.sigmoid(logits))
    assert np.abs(swapped.astype(np.float64) - nhwc(sharpened)[0] * 255).max() <= 1.0
    own = deepfacelive_convert(session, crop, morph_factor=0.0)[1]
    np.testing.assert_allclose(own, run[0.0][1], atol=1e-6)


@pytest.mark.parametrize("kind", ["identity", "pair"])
def test_exports_load_in_deepfacelives_onnxruntime(kind, tmp_path):
    """DeepFaceLive ships onnxruntime 1.15.1: IR 9 and opset 18 are its newest. Pinned at IR <= 9
    and opset <= 17 (the exporter's), so a torch upgrade that raises either fails here first."""
    if kind == "identity":
        exported = export_dfm(DfmSwapModel.from_autoencoders(identity_model(0, 48)), 48, tmp_path / "m.dfm", real_crops(48)[:1])
    else:
        exported = export_dfm(random_merged_pair().dfm_model(), 48, tmp_path / "m.dfm", real_crops(48)[:1])
    model = onnx.load(str(exported.model_path))
    assert model.ir_version <= 9
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert max(o.version for o in model.opset_import) <= 17


def test_export_dfm_rejects_crops_of_another_size(tmp_path):
    with pytest.raises(ValueError, match="resize them first"):
        export_dfm(DfmSwapModel.from_autoencoders(identity_model(0)), SIZE, tmp_path / "x.dfm", real_crops(64)[:1])


# ---------------------------------------------------------------------------------------------
# Sidecars


def test_hash_sidecar_is_crc32_hex_without_newline(tmp_path):
    path = tmp_path / "model.dfm"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    sidecar = write_hash_sidecar(path)
    assert sidecar == tmp_path / "model.hash"
    assert sidecar.read_bytes() == format(zlib.crc32(data), "08x").encode()
    assert len(sidecar.read_bytes()) == 8


def test_model_card_is_deterministic_json_with_sha256(tmp_path):
    path = tmp_path / "model.dfm"
    path.write_bytes(b"onnx bytes")
    card = {"size": 96, "metrics": {"parity": np.float32(0.5)}, "lineage": {"b": 2, "a": 1}}
    card_path = write_model_card(path, card)
    first = card_path.read_bytes()
    assert card_path == tmp_path / "model.json"
    assert write_model_card(path, dict(reversed(list(card.items())))).read_bytes() == first
    loaded = json.loads(first)
    assert loaded["sha256"] == hashlib.sha256(b"onnx bytes").hexdigest()
    assert loaded["size_bytes"] == len(b"onnx bytes") and loaded["metrics"]["parity"] == 0.5
    with pytest.raises(ValueError):
        write_model_card(path, {"metric": float("nan")})
    with pytest.raises(TypeError, match="absolute paths"):
        write_model_card(path, {"source": tmp_path})


def test_dfm_card_and_hash_describe_the_file(tmp_path):
    exported = export_dfm(DfmSwapModel.from_autoencoders(identity_model(0)), SIZE, tmp_path / "hopper.dfm", real_crops()[:2], card={"lineage": {"code": "abc"}})
    data = exported.model_path.read_bytes()
    assert exported.hash_path.read_text() == format(zlib.crc32(data), "08x")
    card = json.loads(exported.card_path.read_text())
    assert card["sha256"] == hashlib.sha256(data).hexdigest()
    assert [i["name"] for i in card["inputs"]] == [DFM_INPUT]
    assert [o["name"] for o in card["outputs"]] == list(DFM_OUTPUTS)
    assert card["layout"] == "NHWC" and card["colour_order"] == "BGR" and card["size"] == SIZE
    assert card["template"]["name"] == "dfl_whole_face" and len(card["template"]["points_normalised_xy"]) == 5
    assert card["parity"]["max_abs_error"] < card["parity"]["tolerance"] and card["lineage"] == {"code": "abc"}
