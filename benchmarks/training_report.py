"""Training figures of a built graph: time per epoch, samples/s, adapter size and share.

Reads what the last materializations recorded in the store (run the README's first command,
or `facepipe build`, first), so it costs nothing to run:

    .venv/bin/python benchmarks/training_report.py [--store store]

For the engine's overhead against a bare PyTorch loop, see train_engine_overhead.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facepipe.resources import default_store_root

TRAINED = ("identity/identity_model", "target/xseg_model", "pair/lora_adapter")


def trained_outputs(store: Path):
    for asset in TRAINED:
        for pointer in sorted((store / asset).rglob("current.json")):
            folder = pointer.parent / json.loads(pointer.read_text())["fingerprint"]
            yield asset, pointer.parent.relative_to(store / asset).as_posix().replace("/", "|"), json.loads(
                (folder / "_artifact.json").read_text()), folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(default_store_root()))
    store = parser.parse_args().store
    rows = 0
    for asset, partition, record, folder in trained_outputs(store):
        meta, config = record["metadata"], record["config"]
        epochs_run = meta["epochs"] - meta["resumed_from_epoch"]
        if epochs_run <= 0:
            continue
        seconds = meta["duration_s"] / epochs_run
        samples = max(config.get("samples_per_epoch") or 0, meta.get("train_faces", meta.get("faces_trained_on", 0)))
        line = (f"{asset}[{partition}]: {epochs_run} epochs on {meta['device']}, {seconds:.2f} s/epoch, "
                f"{samples / seconds:.1f} samples/s")
        if asset == "pair/lora_adapter":
            size = (folder / "adapter.safetensors").stat().st_size
            line += (f"; adapter {int(meta['adapter_parameters'])} parameters = {100 * meta['adapter_share']:.2f}% of the "
                     f"identity model's {int(meta['base_parameters'])}, {size / 1e6:.2f} MB on disk")
        print(line)
        rows += 1
    if not rows:
        print(f"no trained outputs under {store}: run `facepipe demo` (or `facepipe build`) first")


if __name__ == "__main__":
    main()
