"""Settings shared by every asset: where media and the artifact store live, which device trains."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from facepipe.store import ArtifactStore


def project_root() -> Path:
    """The checkout when facepipe runs from one (editable install), else the working directory."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "workspace.yaml").is_file() else Path.cwd()


def use_project_instance() -> Path:
    """Point Dagster at the project's instance unless the user chose another DAGSTER_HOME."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(project_root() / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_data_root() -> str:
    return os.environ.get("FACEPIPE_DATA", str(project_root() / "data"))


def default_store_root() -> str:
    return os.environ.get("FACEPIPE_STORE", str(project_root() / "store"))


def default_store_cache() -> str:
    """Where a machine keeps its copies when the store root is a URL (object storage)."""
    return os.environ.get("FACEPIPE_STORE_CACHE", str(Path.home() / ".cache" / "facepipe" / "store"))


def default_models_root() -> str:
    return os.environ.get("FACEPIPE_MODELS", str(project_root() / "models"))


class FacepipeSettings(ConfigurableResource):
    """Paths and device. Override with FACEPIPE_DATA / FACEPIPE_STORE (/ FACEPIPE_STORE_CACHE) / FACEPIPE_MODELS or in run config.

    The path defaults are read from the environment when a FacepipeSettings is made, not when this
    module is imported: `facepipe --data-root X` sets FACEPIPE_DATA after importing facepipe."""

    data_root: str = Field(default_factory=default_data_root)
    store_root: str = Field(default_factory=default_store_root)  # a folder, or a URL such as s3://bucket/facepipe
    store_cache: str = Field(default_factory=default_store_cache)  # this machine's copies, used when store_root is a URL
    models_root: str = Field(default_factory=default_models_root)  # published profiles and models (the registry)
    device: str = "auto"  # auto = cuda, then mps, then cpu

    def paths(self) -> dict[str, str]:
        """The path settings as resource run config, for runs that must use exactly these folders."""
        return {"data_root": self.data_root, "store_root": self.store_root, "store_cache": self.store_cache,
                "models_root": self.models_root}

    @property
    def data_path(self) -> Path:
        return Path(self.data_root)

    @property
    def models_path(self) -> Path:
        return Path(self.models_root)

    @property
    def device_kind(self) -> str:
        """The kind of device that trains here ('cpu', 'cuda' or 'mps'), recorded in each training's
        fingerprint: 'auto' on a CPU machine and 'cpu' give the same outputs, a GPU gives others."""
        from facepipe.train.device import select_device  # torch: only where something trains

        return select_device(self.device).type

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.store_root, cache=self.store_cache)
