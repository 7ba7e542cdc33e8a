"""Install a built pair with `facepipe install` into real FaceFusion and DeepFaceLive source trees
and run it through each runtime's own code (nothing of theirs is copied into facepipe: their
modules are imported from the folders given, in a child process each).

    .venv/bin/python scripts/runtime_check.py --facefusion ~/facefusion --deepfacelive ~/DeepFaceLive \\
        --model hopper_astronaut --occluder astronaut --out /tmp/runtime_check

Prints the install output, the folders as they are afterwards, then, per runtime:
- FaceFusion: its deep_swapper model set (``create_static_model_set``: the custom models it
  lists), ``get_model_size``, ``has_morph_input``, its ``prepare_crop_frame`` + ``forward`` at
  morph 0, 50 and 100, its ``hash_helper.validate_hash`` of the occluder and its face_masker's
  ``create_occlusion_mask`` with that occluder;
- DeepFaceLive: ``get_available_models_info`` on its dfm_models folder, then ``DFMModel``:
  ``get_input_res``, ``has_morph_value`` and ``convert`` at morph 0, 0.75 (its control's start)
  and 1.
The crop is the target's first curated face from the store (FACEPIPE_STORE), aligned by
facepipe; the outputs go to ``--out`` as PNG strips (crop | morph values...). Needs the runtimes'
own dependencies importable (FaceFusion: onnxruntime, opencv, numpy, as facepipe's; DeepFaceLive
also numexpr: ``--pythonpath`` adds a folder holding it). A DeepFaceLive folder without
``userdata/dfm_models`` gets that folder made first, as DeepFaceLive does on its first start.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

FACEFUSION_RUN = r'''
import sys, json, numpy, cv2
from facefusion import state_manager
from facefusion.processors.modules.deep_swapper import core
from facefusion import face_masker, hash_helper
model_set = core.create_static_model_set("full")
custom = sorted(k for k in model_set if k.startswith("custom/"))
print("FaceFusion deep_swapper lists custom models:", custom)
for key, value in [("deep_swapper_model", sys.argv[1]), ("execution_device_ids", ["0"]), ("execution_providers", ["cpu"]),
                   ("execution_thread_count", 1), ("face_occluder_model", sys.argv[3]), ("face_parser_model", "bisenet_resnet_34"),
                   ("download_providers", [])]:
    state_manager.init_item(key, value)
print("model", sys.argv[1], "-> path", core.get_model_options()["sources"]["deep_swapper"]["path"])
size = core.get_model_size()
print("get_model_size:", list(size), " has_morph_input:", core.has_morph_input())
crop = cv2.resize(numpy.load(sys.argv[2]), tuple(size), interpolation=cv2.INTER_AREA)
tiles = [crop]
for percent in (0, 50, 100):
    morph = numpy.array([numpy.interp(percent, [0, 100], [0, 1])]).astype(numpy.float32)
    face, source_mask, target_mask = core.forward(core.prepare_crop_frame(crop.copy()), morph)
    out = core.normalize_crop_frame(face)
    tiles.append(out)
    print(f"forward at morph {percent}: face {list(face.shape)} mean {out.mean():.1f}, masks {list(source_mask.shape)} "
          f"{list(target_mask.shape)}, finite {bool(numpy.isfinite(face).all())}")
cv2.imwrite(sys.argv[4], numpy.hstack(tiles))
occluder = core.resolve_relative_path("../.assets/models/" + sys.argv[3] + ".onnx")
print("validate_hash(" + sys.argv[3] + ".onnx):", hash_helper.validate_hash(occluder))
mask = face_masker.create_occlusion_mask(cv2.resize(crop, (256, 256)))
print(f"create_occlusion_mask with {sys.argv[3]}: {list(mask.shape)} in [{mask.min():.2f}, {mask.max():.2f}]")
'''

DEEPFACELIVE_RUN = r'''
import sys, numpy, cv2
from pathlib import Path
from modelhub.DFLive import DFMModel as dfm
folder = Path(sys.argv[1])
infos = dfm.get_available_models_info(folder)
local = [i for i in infos if i.get_url() is None]
print("DeepFaceLive lists from dfm_models:", [i.get_name() for i in local], f"(+ {len(infos) - len(local)} downloadable celebs)")
info = next(i for i in local if i.get_name() == sys.argv[2])
model = dfm.DFMModel(info.get_model_path())
print("DFMModel: get_input_res", model.get_input_res(), " has_morph_value", model.has_morph_value())
crop = numpy.load(sys.argv[3])
tiles = [crop]  # convert hands its outputs back at the size it was given
for factor in (0.0, 0.75, 1.0):
    face, celeb_mask, face_mask = model.convert(crop, morph_factor=factor)
    tiles.append(face[0])
    print(f"convert at morph {factor}: face {list(face.shape)} {face.dtype} mean {face.mean():.1f}, masks "
          f"{list(celeb_mask.shape)} {list(face_mask.shape)}")
cv2.imwrite(sys.argv[4], numpy.hstack(tiles))
'''


def first_target_crop(target: str, out: Path) -> Path:
    from facepipe.faces import FaceSet
    from facepipe.resources import FacepipeSettings

    crops = FaceSet.load(FacepipeSettings().store.current("target/curated_faces", target).path).crops
    path = out / "crop.npy"
    np.save(path, np.asarray(crops[0]))
    return path


def run(command: list[str], label: str, cwd: Path | None = None, extra_path: list[str] = ()) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, extra_path), os.environ.get("PYTHONPATH", "")])}
    print(f"\n$ {label}", flush=True)
    subprocess.run(command, cwd=cwd, env=env, check=True)


def listing(folder: Path) -> None:
    print(f"{folder}:")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(folder)}  {path.stat().st_size} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facefusion", type=Path, required=True, help="a FaceFusion source tree (facefusion.py in it)")
    parser.add_argument("--deepfacelive", type=Path, required=True, help="a DeepFaceLive source tree (main.py in it)")
    parser.add_argument("--model", required=True, help="the published swap model, <identity>_<target>")
    parser.add_argument("--occluder", required=True, help="the target whose occluder goes into FaceFusion's xseg_1")
    parser.add_argument("--out", type=Path, default=Path("/tmp/runtime_check"))
    parser.add_argument("--pythonpath", action="append", default=[], help="extra import folder for the runtimes")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    facepipe = [sys.executable, "-m", "facepipe.cli", "install"]
    userdata = args.deepfacelive / "userdata"
    (userdata / "dfm_models").mkdir(parents=True, exist_ok=True)  # what DeepFaceLive makes on its first start

    to_facefusion = ["facefusion", str(args.facefusion), "--model", args.model, "--occluder", args.occluder]
    run([*facepipe, *to_facefusion], "facepipe install " + " ".join(to_facefusion))
    to_deepfacelive = ["deepfacelive", str(userdata), "--model", args.model]
    run([*facepipe, *to_deepfacelive], "facepipe install " + " ".join(to_deepfacelive))
    print()
    listing(args.facefusion / ".assets" / "models")
    listing(userdata / "dfm_models")

    crop = first_target_crop(args.occluder, args.out)
    run([sys.executable, "-c", FACEFUSION_RUN, f"custom/{args.model}", str(crop), "xseg_1",
         str(args.out / "facefusion.png")], "FaceFusion's own code on the installed files", cwd=args.facefusion,
        extra_path=[args.facefusion, *args.pythonpath])
    run([sys.executable, "-c", DEEPFACELIVE_RUN, str(userdata / "dfm_models"), args.model, str(crop),
         str(args.out / "deepfacelive.png")], "DeepFaceLive's own code on the installed files", cwd=args.deepfacelive,
        extra_path=[args.deepfacelive, *args.pythonpath])
    print(f"strips (crop | outputs at each morph value): {args.out / 'facefusion.png'}, {args.out / 'deepfacelive.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
