"""The one way an asset runs: inputs from the store, fingerprint, reuse or build, report to Dagster.

An asset declares each input once, as Dagster ``ins`` made with ``upstream(...)``: the
store-backed input manager hands the function the upstream's current ``Artifact``, and
``run_stage`` fingerprints the same inputs by their content hashes. The code version is the one
given to ``@asset``. What an asset reads from outside the store (media, user masks, the
embedder) is one function registered with ``reads_outside``, which the nightly calls too.
"""

from __future__ import annotations

import base64
import functools
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    DataVersion,
    InputContext,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    input_manager,
)

from facepipe.assets.failures import bad_input_failure
from facepipe.resources import FacepipeSettings
from facepipe.store import Artifact, MissingInput, fingerprint

PREVIEW_FILE = "preview.png"
DROPPED_FILE = "dropped.png"  # curated faces: what curation dropped, labelled with the reason
# Images an asset may leave in its output folder; each is shown in the UI as metadata.
IMAGES = (PREVIEW_FILE, DROPPED_FILE, "loss_curve.png")
LIBRARIES = ("facepipe", "numpy", "opencv-python", "mediapipe", "scipy", "torch", "onnx", "onnxruntime", "dlib-bin", "peft")


STORE_INPUT = "store_input"  # the input manager's resource key

# asset name -> what it reads from outside the store: (settings, partition key, config) -> {input: version}
OutsideInputs = Callable[[FacepipeSettings, str, dict[str, Any]], dict[str, str]]
OUTSIDE_INPUTS: dict[str, OutsideInputs] = {}


def store_name(key: AssetKey) -> str:
    """The store's name of an asset: "identity/faces" for AssetKey(["identity", "faces"])."""
    return "/".join(key.path)


def upstream(asset: str, dimension: str | None = None) -> AssetIn:
    """An input read from the store: `asset` ("target/faces") of the same partition, or, for a
    pair asset, of the pair's `dimension` ("identity" or "target")."""
    mapping = MultiToSingleDimensionPartitionMapping(partition_dimension_name=dimension) if dimension else None
    return AssetIn(key=AssetKey(asset.split("/")), partition_mapping=mapping, input_manager_key=STORE_INPUT)


@input_manager(required_resource_keys={"settings"})
def store_input(context: InputContext) -> Artifact:
    """The upstream asset's current artifact for the mapped partition; a missing one fails at
    once (no retry) naming what to materialize first."""
    asset, partition = store_name(context.asset_key), context.asset_partition_key
    try:
        return context.resources.settings.store.current(asset, partition)
    except MissingInput as error:
        step = context.step_context
        raise bad_input_failure(f"{step.step.key.replace('__', '/')} [{step.partition_key}]", error) from error


def reads_outside(*assets: str) -> Callable[[OutsideInputs], OutsideInputs]:
    """Register the function that tells what `assets` read from outside the store."""

    def register(function: OutsideInputs) -> OutsideInputs:
        for asset in assets:
            OUTSIDE_INPUTS[asset] = function
        return function

    return register


def input_versions(context: AssetExecutionContext, settings: FacepipeSettings, config: dict[str, Any]) -> dict[str, str]:
    """{input name: content hash} of the asset's declared inputs, plus what it reads from outside the store."""
    store = settings.store
    versions = {
        name: store.current_record(store_name(key), context.asset_partition_key_for_input(name))["content_hash"]
        for name, key in sorted(context.assets_def.keys_by_input_name.items())
    }
    outside = OUTSIDE_INPUTS.get(store_name(context.asset_key))
    return {**versions, **(outside(settings, context.partition_key, config) if outside else {})}


def code_version_of(context: AssetExecutionContext) -> str:
    return context.assets_def.code_versions_by_key[context.asset_key]


def library_versions() -> dict[str, str]:
    return dict(_installed_versions())  # a copy: the cached one must not change under a caller


# Read once per process (~6 ms from the packages' metadata, and every step records them): a package
# upgraded under a running process is not what that process has loaded anyway.
@functools.cache
def _installed_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def run_stage(
    context: AssetExecutionContext,
    settings: FacepipeSettings,
    config: dict[str, Any],
    write: Callable[[Path], dict[str, Any] | None],
    publish: Callable[[Artifact], None] | None = None,
    inputs: dict[str, str] | None = None,
) -> MaterializeResult:
    """Reuse the stored output for this fingerprint or build it with `write(folder)`.

    The fingerprint covers the asset's code version, `config` and its inputs' versions (see
    `input_versions`; pass `inputs` when they are already computed), so a changed input, config
    or code version gives a new fingerprint and everything else is a cache hit.
    `publish(artifact)`, if given, copies this run's output where users pick it up (models/).
    """
    store, partition, asset = settings.store, context.partition_key, store_name(context.asset_key)
    code_version = code_version_of(context)
    inputs = inputs if inputs is not None else input_versions(context, settings, config)
    fp = fingerprint(code_version, config, inputs)
    lineage = {"code_version": code_version, "config": config, "inputs": inputs, "libraries": library_versions()}
    artifact = store.build(asset, partition, fp, write, lineage, warn=context.log.warning)
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
