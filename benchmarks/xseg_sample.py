"""XSeg on the sample target: training speed, and IoU against the generator's true occluders.

Builds the sample, materializes the target chain and xseg_model with the default (CPU) config,
then prints seconds per epoch, samples/s, and, on held-out faces that an occluder covers, the
IoU of the landmark hull (which ignores occluders: the baseline) and of the trained model,
both against the true visible face (hull minus the occluder the generator drew).

    .venv/bin/python benchmarks/xseg_sample.py [--epochs N]
    .venv/bin/python benchmarks/xseg_sample.py --built data store   # reuse a finished `facepipe demo`
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from dagster import DagsterInstance, materialize

from facepipe.assets.curation import build_curation_asset
from facepipe.assets.prep import build_prep_assets
from facepipe.assets.stage import STORE_INPUT, store_input
from facepipe.assets.xseg import xseg_model
from facepipe.faces import FaceSet
from facepipe.resources import FacepipeSettings
from facepipe.sample import TARGET_KEY, build_sample, load_occluder_masks
from facepipe.store import ArtifactStore
from facepipe.models.xseg import XSegNHWC, predict_masks
from facepipe.train.tasks.xseg import occluder_truth_iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="override the default epochs")
    parser.add_argument("--config", type=json.loads, default={}, help='XSegConfig overrides as JSON, e.g. \'{"width": 12}\'')
    parser.add_argument("--built", nargs=2, type=Path, metavar=("DATA", "STORE"),
                        help="measure an existing build of the sample instead of training a new one")
    args = parser.parse_args()
    if args.built:
        report(*args.built)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_sample(root / "data")
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("target", [TARGET_KEY])
        settings = FacepipeSettings(data_root=str(root / "data"), store_root=str(root / "store"))
        overrides = {**args.config, **({"epochs": args.epochs} if args.epochs else {})}
        run_config = {"ops": {"target__xseg_model": {"config": overrides}}}
        materialize([*build_prep_assets("target"), build_curation_asset("target"), xseg_model], instance=instance,
                    partition_key=TARGET_KEY, resources={"settings": settings, STORE_INPUT: store_input},
                    run_config=run_config)
        report(root / "data", root / "store")


def report(data: Path, store_root: Path) -> None:
    store = ArtifactStore(store_root)
    xseg = store.current("target/xseg_model", TARGET_KEY)
    meta = xseg.metadata
    history_seconds = meta["duration_s"] / max(meta["epochs"] - meta["resumed_from_epoch"], 1)
    samples = xseg.record["config"]["samples_per_epoch"]
    print(f"xseg training: {meta['epochs']} epochs in {meta['duration_s']}s = {history_seconds:.2f} s/epoch, "
          f"{samples / history_seconds:.1f} samples/s ({meta['device']}, width {xseg.record['config']['width']}, "
          f"{xseg.record['config']['resolution']} px)")
    print(f"held-out IoU vs training labels: clean {meta.get('holdout_iou_clean')}, "
          f"synthetic occluders {meta.get('holdout_iou_occluded')}")

    faces = FaceSet.load(store.current("target/curated_faces", TARGET_KEY).path)
    from facepipe.faces import holdout_split

    _, held = holdout_split(len(faces), xseg.record["config"]["holdout_every"])
    predicted = predict_masks(XSegNHWC.from_folder(xseg.path), np.asarray(faces.crops[held]))
    truth = load_occluder_masks(data / "sample_truth" / TARGET_KEY / "occluders.npz")
    scores = occluder_truth_iou(faces.index.iloc[held], np.asarray(faces.masks[held]), predicted, truth)
    print(f"held-out faces with a real occluder: {scores['occluded_faces']}; IoU vs true visible face: "
          f"landmark hull {scores['hull_iou']:.3f}, trained XSeg {scores['model_iou']:.3f} "
          f"(ratio {scores['model_iou'] / scores['hull_iou']:.3f})")


if __name__ == "__main__":
    main()
