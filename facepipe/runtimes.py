"""The two swapper runtimes facepipe's models go into, as far as facepipe meets them: which
folder is an installation, where each looks for models, what it lists, how it calls a model.

Written from their own code (nothing of theirs is imported or copied):
- FaceFusion 3.x (facefusion/facefusion): an installation is the folder holding
  ``facefusion.py`` and the ``facefusion/`` package; ``deep_swapper`` lists every entry of
  ``.assets/models/custom/`` whose name does not start with ``.`` or ``__`` as the model
  ``custom/<stem>`` (the last such entry of a stem, in sorted order, wins: ``x.dfm`` beside
  ``x.json`` becomes the .json, which then fails to load); it feeds the crop sharpened
  (1.75·crop − 0.75·GaussianBlur σ 2) to ``in_face:0`` and, when the model has it,
  ``morph_value:0`` = ``--deep-swapper-morph`` / 100 (default 1), by name, and unpacks the three
  outputs by position. Occluders are only ``.assets/models/xseg_{1,2,3}.onnx``, each checked
  against ``xseg_N.hash`` beside it (zlib CRC32 as 8 lowercase hex digits, compared with the
  file's text as it is): a mismatch deletes the model and downloads FaceFusion's own again.
- DeepFaceLive (iperov/DeepFaceLive): models live in ``<userdata>/dfm_models/`` (the folder given
  to ``--userdata-dir``; its Windows builds pass ``userdata/`` beside the launcher); it lists the
  entries whose name ends in ``.dfm`` (any case) as models named by their stem. DFMModel takes
  the first input (its name must hold ``in_face``) as the crop, uint8 / 255 without sharpening,
  and a second input, if any, must hold ``morph_value`` in its name: it is fed the morph
  control's value (which starts at 0.75) as ``morph_value:0``; outputs by position.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facepipe.models.swap import DFM_INPUT, DFM_MORPH_INPUT, dfm_input

FACEFUSION = "facefusion"
DEEPFACELIVE = "deepfacelive"
FACEFUSION_OCCLUDER_SLOTS = (1, 2, 3)
DEEPFACELIVE_START_MORPH = 0.75  # where DeepFaceLive's morph control starts for a morph model


class NotAnInstallation(ValueError):
    """The folder given is not an installation of the runtime."""


@dataclass(frozen=True)
class FaceFusion:
    root: Path

    name = FACEFUSION
    label = "FaceFusion"

    @classmethod
    def at(cls, root: Path | str) -> FaceFusion:
        root = Path(root)
        if not (root / "facefusion.py").is_file() or not (root / "facefusion").is_dir():
            raise NotAnInstallation(
                f"{root} is not a FaceFusion installation (no facefusion.py and facefusion/ in it); "
                f"pass the folder you run `python facefusion.py` in")
        return cls(root)

    @property
    def models(self) -> Path:
        return self.root / ".assets" / "models"

    @property
    def swap_folder(self) -> Path:
        return self.models / "custom"

    def occluder(self, slot: int) -> Path:
        if slot not in FACEFUSION_OCCLUDER_SLOTS:
            raise ValueError(f"FaceFusion has occluder slots xseg_1, xseg_2 and xseg_3 only, not xseg_{slot}")
        return self.models / f"xseg_{slot}.onnx"

    def listed(self) -> dict[str, Path]:
        """deep_swapper's custom models: ``custom/<stem>`` → the file it would load."""
        if not self.swap_folder.is_dir():
            return {}
        return {f"custom/{Path(name).stem}": self.swap_folder / name
                for name in sorted(os.listdir(self.swap_folder)) if not name.startswith((".", "__"))}

    @staticmethod
    def hash_valid(model: Path) -> bool:
        """FaceFusion's check of ``<model>.hash`` (its text, as it is, against the CRC32)."""
        hash_path = model.with_suffix(".hash")
        if not model.is_file() or not hash_path.is_file():
            return False
        return hash_path.read_text() == format(zlib.crc32(model.read_bytes()), "08x")

    @staticmethod
    def run(session, crop_bgr: np.ndarray, morph_percent: int = 100) -> list[np.ndarray]:
        """deep_swapper's call: inputs by name, the crop sharpened, outputs by position."""
        from facepipe.evaluate import facefusion_input

        feeds = {}
        for model_input in session.get_inputs():
            if model_input.name == DFM_INPUT:
                feeds[model_input.name] = facefusion_input(np.asarray(crop_bgr)[None])
            if model_input.name == DFM_MORPH_INPUT:
                feeds[model_input.name] = np.array([np.interp(morph_percent, [0, 100], [0, 1])], dtype=np.float32)
        return session.run(None, feeds)


@dataclass(frozen=True)
class DeepFaceLive:
    swap_folder: Path

    name = DEEPFACELIVE
    label = "DeepFaceLive"

    @classmethod
    def at(cls, root: Path | str) -> DeepFaceLive:
        root = Path(root)
        for folder in (root / "dfm_models", root / "userdata" / "dfm_models", *([root] if root.name == "dfm_models" else [])):
            if folder.is_dir():
                return cls(folder)
        raise NotAnInstallation(
            f"{root} is not a DeepFaceLive userdata folder (no dfm_models/ in it or in its userdata/); pass the "
            f"folder given to --userdata-dir (DeepFaceLive makes dfm_models/ there on its first start)")

    def listed(self) -> dict[str, Path]:
        """DFMModel's listing of the folder: model name (stem) → file."""
        return {Path(name).stem: self.swap_folder / name
                for name in sorted(os.listdir(self.swap_folder)) if name.lower().endswith(".dfm")}

    @staticmethod
    def run(session, crop_bgr: np.ndarray, morph_factor: float = DEEPFACELIVE_START_MORPH) -> list[np.ndarray]:
        """DFMModel's check and call: first input the face, an optional second the morph value."""
        inputs = session.get_inputs()
        if not inputs or "in_face" not in inputs[0].name or len(inputs) > 2 or (
                len(inputs) == 2 and "morph_value" not in inputs[1].name):
            raise ValueError(f"DeepFaceLive would refuse this model (inputs {[i.name for i in inputs]})")
        feeds = {DFM_INPUT: dfm_input(np.asarray(crop_bgr))}
        if len(inputs) == 2:
            feeds[DFM_MORPH_INPUT] = np.float32([morph_factor])
        return session.run(None, feeds)


RUNTIMES = {FACEFUSION: FaceFusion, DEEPFACELIVE: DeepFaceLive}


def locate(runtime: str, root: Path | str) -> FaceFusion | DeepFaceLive:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose {' or '.join(RUNTIMES)}")
    return RUNTIMES[runtime].at(root)
