"""The one way an asset runs: fingerprint, reuse or build in the store, report to Dagster."""

from __future__ import annotations

import base64
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue

from facepipe.store import Artifact, ArtifactStore, fingerprint

PREVIEW_FILE = "preview.png"
# Images an asset may leave in its output folder; each is shown in the UI as metadata.
IMAGES = (PREVIEW_FILE, "loss_curve.png")
LIBRARIES = ("facepipe", "numpy", "opencv-python", "mediapipe", "scipy", "torch", "onnx", "onnxruntime", "dlib-bin", "peft")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def run_stage(
    context: AssetExecutionContext,
    store: ArtifactStore,
    asset: str,
    code_version: str,
    config: dict[str, Any],
    inputs: dict[str, str],
    write: Callable[[Path], dict[str, Any] | None],
    publish: Callable[[Artifact], None] | None = None,
) -> MaterializeResult:
    """Reuse the stored output for this fingerprint or build it with `write(folder)`.

    `inputs` maps each input's name to its data version (content hash), so a changed input,
    config or code version gives a new fingerprint and everything else is a cache hit.
    `publish(artifact)`, if given, copies this run's output where users pick it up (models/).
    """
    partition = context.partition_key
    fp = fingerprint(code_version, config, inputs)
    lineage = {"code_version": code_version, "config": config, "inputs": inputs, "libraries": library_versions()}
    artifact = store.build(asset, partition, fp, write, lineage)
    if artifact.reused:
        context.log.info(f"{asset}[{partition}]: cache hit, reusing {artifact.path} (nothing recomputed)")
    else:
        context.log.info(f"{asset}[{partition}]: built {artifact.path}")
    if publish is not None:
        publish(artifact)
    return MaterializeResult(metadata=dagster_metadata(artifact), data_version=DataVersion(artifact.content_hash))


def dagster_metadata(artifact: Artifact) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "cache": "hit" if artifact.reused else "built",
        "fingerprint": artifact.fingerprint,
        "content_hash": artifact.content_hash,
        "path": MetadataValue.path(str(artifact.path)),
        "code_version": artifact.record.get("code_version", ""),
        "config": MetadataValue.json(artifact.record.get("config", {})),
        "inputs": MetadataValue.json(artifact.record.get("inputs", {})),
    }
    for key, value in artifact.metadata.items():
        if key.endswith("_md"):  # markdown (tables) for the UI
            metadata[key[:-3]] = MetadataValue.md(value)
        else:
            metadata[key] = MetadataValue.json(value) if isinstance(value, (dict, list)) else value
    for image in IMAGES:
        if (artifact.path / image).is_file():
            encoded = base64.b64encode((artifact.path / image).read_bytes()).decode()
            metadata[image.removesuffix(".png")] = MetadataValue.md(f"![{image}](data:image/png;base64,{encoded})")
    return metadata
