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
    export_dfm,
    export_onnx,
    verify_onnx,
    write_hash_sidecar,
    write_model_card,
)
from facepipe.faces import resize_crops
from facepipe.models.autoencoder import AutoencoderConfig, IdentityAutoencoder
from facepipe.models.swap import DFM_INPUT, DFM_OUTPUTS, DfmSwapModel, dfm_input

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


def deep_swapper_forward(session: ort.InferenceSession, crop_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What FaceFusion's deep_swapper processor does with a custom .dfm (facefusion/processors/
    modules/deep_swapper.py): model size from the `in_face:0` input, the aligned uint8 BGR crop
    sharpened, scaled to [0, 1], batched as NHWC float32, and three outputs unpacked in order."""
    model_size = next(i.shape[1:3] for i in session.get_inputs() if i.name == "in_face:0")
    assert list(crop_bgr.shape[:2]) == list(model_size)
    sharpened = cv2.addWeighted(crop_bgr, 1.75, cv2.GaussianBlur(crop_bgr, (0, 0), 2), -0.75, 0)
    feed = {"in_face:0": np.expand_dims(sharpened / 255.0, axis=0).astype(np.float32)}
    crop_target_mask, crop_frame, crop_source_mask = session.run(None, feed)
    swapped = (crop_frame[0] * 255.0).clip(0, 255).astype(np.uint8)
    mask = np.minimum.reduce([crop_source_mask[0], crop_target_mask[0]]).reshape(model_size).clip(0, 1)
    mask = cv2.GaussianBlur(cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)), iterations=2), (0, 0), 6.25)
    return swapped, mask, feed["in_face:0"]


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
