"""`facepipe install`: published models into FaceFusion's and DeepFaceLive's folders, checked
with each runtime's own discovery rule and call (restated here from their code, not taken from
facepipe.runtimes)."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_export import deep_swapper_forward, deepfacelive_convert, random_merged_pair, real_crops
from torch import nn

from facepipe.cli import main
from facepipe.export import export_dfm, export_verified
from facepipe.install import BACKUP_FOLDER, InstallError, install, undo
from facepipe.models.swap import dfm_input
from facepipe.registry import publish
from facepipe.runtimes import NotAnInstallation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 48
NAME = "hopper_astronaut"


class TinyOccluder(nn.Module):
    """An XSeg stand-in in the deployed form: NHWC BGR [0, 1] in, a [0, 1] mask out."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(image.mean(dim=3, keepdim=True) * 4 - 2)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """models/ as a pair build leaves it: the swap model with its hash and card, the target's
    occluder with its own, and index.json."""
    work = tmp_path_factory.mktemp("built")
    exported = export_dfm(random_merged_pair(SIZE).dfm_model(), SIZE, work / f"{NAME}.dfm", real_crops(SIZE)[:1])
    grey = np.full((1, 256, 256, 3), 0.5, np.float32)
    occluder = export_verified(TinyOccluder(), [[grey]], work / "astronaut_xseg.onnx", ["input"], ["mask"], {"kind": "occluder"})
    models = work / "models"
    publish(models, NAME, [exported.model_path, exported.hash_path, exported.card_path], {"kind": "swap", "format": "dfm"})
    publish(models, "astronaut_xseg", [occluder.model_path, occluder.hash_path, occluder.card_path],
            {"kind": "occluder", "format": "onnx", "target": "astronaut"})
    return models


def facefusion_install(root: Path) -> Path:
    """A FaceFusion folder after a README-following copy: its own xseg_1 with its hash, and the
    model's card and hash beside an older copy of the model in custom/."""
    (root / "facefusion").mkdir(parents=True)
    (root / "facefusion.py").write_text("# FaceFusion's entry point\n")
    models = root / ".assets" / "models"
    (models / "custom").mkdir(parents=True)
    (models / "xseg_1.onnx").write_bytes(b"facefusion's own occluder")
    (models / "xseg_1.hash").write_text(format(zlib.crc32(b"facefusion's own occluder"), "08x"))
    for suffix in ("dfm", "hash", "json"):
        (models / "custom" / f"{NAME}.{suffix}").write_bytes(f"older {suffix}".encode())
    return root


def facefusion_lists(custom: Path) -> dict[str, Path]:
    """deep_swapper's model set from .assets/models/custom (resolve_file_paths: sorted names not
    starting with '.' or '__'; model id custom/<stem>; a later file of a stem replaces an earlier)."""
    found = {}
    for name in sorted(os.listdir(custom)):
        if not name.startswith((".", "__")):
            found["custom/" + os.path.splitext(name)[0]] = custom / name
    return found


def deepfacelive_lists(folder: Path) -> dict[str, Path]:
    """get_available_models_info's scan of dfm_models: entries whose name ends in .dfm (any case)."""
    return {Path(e.path).stem: Path(e.path) for e in sorted(os.scandir(folder), key=lambda e: e.path)
            if e.name.lower().endswith(".dfm")}


def facefusion_hash_valid(model: Path) -> bool:
    """hash_helper.validate_hash: the .hash file's text equals format(zlib.crc32(bytes), '08x')."""
    return model.with_suffix(".hash").read_text() == format(zlib.crc32(model.read_bytes()), "08x")


def test_facefusion_install_lists_only_the_model_and_runs_it_as_deep_swapper_does(published, tmp_path):
    root = facefusion_install(tmp_path / "facefusion")
    models = root / ".assets" / "models"
    (models / "custom" / f"{NAME}.v1.dfm").write_bytes(b"another model (custom/hopper_astronaut.v1)")
    # The bug this fixes: with the card beside the model, FaceFusion's custom/<name> is the .json.
    assert facefusion_lists(models / "custom")[f"custom/{NAME}"].suffix == ".json"

    report = install("facefusion", root, published, [NAME], occluder="astronaut", slot=1)
    text = "\n".join(report.lines)

    assert facefusion_lists(models / "custom") == {f"custom/{NAME}": models / "custom" / f"{NAME}.dfm",
                                                   f"custom/{NAME}.v1": models / "custom" / f"{NAME}.v1.dfm"}
    assert (models / "custom" / f"{NAME}.dfm").read_bytes() == (published / "trained" / f"{NAME}.dfm").read_bytes()
    assert f"custom/{NAME}.json: moved to {BACKUP_FOLDER}/custom/{NAME}.json" in text
    assert f"kept as {BACKUP_FOLDER}/custom/{NAME}.dfm" in text
    # The occluder in slot 1, with the hash FaceFusion checks it against; its own is kept.
    assert (models / "xseg_1.onnx").read_bytes() == (published / "trained" / "astronaut_xseg.onnx").read_bytes()
    assert facefusion_hash_valid(models / "xseg_1.onnx") and len((models / "xseg_1.hash").read_bytes()) == 8
    assert (models / BACKUP_FOLDER / "xseg_1.onnx").read_bytes() == b"facefusion's own occluder"
    assert "xseg_1.onnx: written; the file it replaced is kept as" in text
    assert f"--deep-swapper-model custom/{NAME}" in text and "--face-occluder-model xseg_1" in text
    assert "--undo" in text

    # Run as deep_swapper does: the model by name, inputs by name, outputs by position.
    session = ort.InferenceSession(str(facefusion_lists(models / "custom")[f"custom/{NAME}"]), providers=["CPUExecutionProvider"])
    crop = real_crops(SIZE)[2]
    swapped, mask, fed = deep_swapper_forward(session, crop, morph_percent=100)
    merged = random_merged_pair(SIZE)
    with torch.no_grad():
        expected = merged.dfm_model()(torch.from_numpy(fed))[1].numpy()[0]  # the exported module, in torch
    assert np.abs(swapped.astype(np.float64) - expected * 255).max() <= 1.0
    assert mask.shape == (SIZE, SIZE) and np.isfinite(mask).all()
    # The occluder as face_masker calls it: input 'input', first output's first item.
    occluder = ort.InferenceSession(str(models / "xseg_1.onnx"), providers=["CPUExecutionProvider"])
    occlusion = occluder.run(None, {"input": np.full((1, 256, 256, 3), 0.5, np.float32)})[0][0]
    assert occlusion.shape == (256, 256, 1) and 0 <= occlusion.min() and occlusion.max() <= 1

    # Installing again changes nothing.
    again = "\n".join(install("facefusion", root, published, [NAME], occluder="astronaut").lines)
    assert f"custom/{NAME}.dfm: unchanged" in again and "xseg_1.onnx: unchanged" in again

    # --undo puts FaceFusion back as it was.
    undo("facefusion", root)
    assert (models / "xseg_1.onnx").read_bytes() == b"facefusion's own occluder" and facefusion_hash_valid(models / "xseg_1.onnx")
    assert sorted(p.name for p in (models / "custom").iterdir()) == [f"{NAME}.{s}" for s in ("dfm", "hash", "json", "v1.dfm")]
    assert (models / "custom" / f"{NAME}.dfm").read_bytes() == b"older dfm"
    assert not (models / BACKUP_FOLDER).exists()


def test_deepfacelive_install_lists_the_model_and_runs_it_as_dfmmodel_does(published, tmp_path):
    userdata = tmp_path / "DeepFaceLive" / "userdata"
    (userdata / "dfm_models").mkdir(parents=True)
    (userdata / "dfm_models" / "Keanu_Reeves.dfm").write_bytes(b"another model")
    report = install("deepfacelive", tmp_path / "DeepFaceLive", published)  # the build folder: userdata/ inside
    folder = userdata / "dfm_models"
    listed = deepfacelive_lists(folder)
    assert listed == {"Keanu_Reeves": folder / "Keanu_Reeves.dfm", NAME: folder / f"{NAME}.dfm"}
    assert "morph control starts at 0.75" in "\n".join(report.lines)

    session = ort.InferenceSession(str(listed[NAME]), providers=["CPUExecutionProvider"])
    crop = real_crops(SIZE)[1]
    merged = random_merged_pair(SIZE)
    face, exported = torch.from_numpy(dfm_input(crop)), merged.dfm_model()
    with torch.no_grad():  # the exported module in torch: the swap at morph 1, the target's own face at 0
        swap = exported(face)[1].numpy()
        own = exported(face, torch.zeros(1))[1].numpy()
    np.testing.assert_allclose(deepfacelive_convert(session, crop, morph_factor=1.0)[1], swap, atol=1e-4)
    np.testing.assert_allclose(deepfacelive_convert(session, crop, morph_factor=0.0)[1], own, atol=1e-4)
    at_start = deepfacelive_convert(session, crop)  # its control's starting value, 0.75
    assert [o.shape for o in at_start] == [(1, SIZE, SIZE, 1), (1, SIZE, SIZE, 3), (1, SIZE, SIZE, 1)]

    undo("deepfacelive", folder)  # the userdata folder, or dfm_models itself, is accepted too
    install("deepfacelive", userdata, published)
    undo("deepfacelive", userdata)
    assert deepfacelive_lists(folder) == {"Keanu_Reeves": folder / "Keanu_Reeves.dfm"}


def test_a_model_replaced_by_hand_after_install_is_left_alone_by_undo(published, tmp_path):
    folder = tmp_path / "dfm_models"
    folder.mkdir()
    install("deepfacelive", tmp_path, published)
    (folder / f"{NAME}.dfm").write_bytes(b"the user's own retrained model")
    lines = undo("deepfacelive", tmp_path).lines
    assert any("changed since facepipe's install; left as it is" in line for line in lines)
    assert (folder / f"{NAME}.dfm").read_bytes() == b"the user's own retrained model"


@pytest.mark.parametrize("runtime", ["facefusion", "deepfacelive"])
def test_a_folder_that_is_not_an_installation_is_refused_in_one_line(runtime, published, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FACEPIPE_MODELS", str(published))
    (tmp_path / "models").mkdir()  # something else entirely
    assert main(["install", runtime, str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err and "not a" in err
    assert list(tmp_path.iterdir()) == [tmp_path / "models"]  # nothing written
    with pytest.raises(NotAnInstallation):
        install(runtime, tmp_path, published)


def test_unknown_models_and_occluders_for_deepfacelive_are_refused(published, tmp_path):
    root = facefusion_install(tmp_path / "ff")
    with pytest.raises(InstallError, match=f"no published swap model nobody_else.*published: {NAME}"):
        install("facefusion", root, published, ["nobody_else"])
    with pytest.raises(InstallError, match="no published occluder for target 'moon'.*astronaut"):
        install("facefusion", root, published, occluder="moon")
    (tmp_path / "dfl" / "dfm_models").mkdir(parents=True)
    with pytest.raises(InstallError, match="FaceFusion only"):
        install("deepfacelive", tmp_path / "dfl", published, occluder="astronaut")
    card = json.loads((published / "trained" / f"{NAME}.json").read_text())
    assert card["inputs"][1]["name"] == "morph_value:0"
