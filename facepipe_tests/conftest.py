import os
import uuid
from pathlib import Path

import pytest
import fsspec.config
from dagster import AssetSelection, DagsterInstance, materialize

from facepipe.assets.curation import build_curation_asset
from facepipe.assets.identity import identity_model, identity_profile, identity_profile_is_usable
from facepipe.assets.pair import PAIR_ASSETS, PAIR_CHECKS
from facepipe.assets.prep import build_prep_assets
from facepipe.assets.stage import STORE_INPUT, store_input
from facepipe.assets.xseg import target_masks, xseg_holdout_iou, xseg_model
from facepipe.partitions import PARTITIONS
from facepipe.resources import FacepipeSettings

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Seconds-long trainings, for in-process builds of the whole graph on a few frames.
TINY_TRAINING = {
    "identity__identity_model": {"epochs": 3, "batch_size": 4, "resolution": 32, "width": 8, "latent_dim": 32, "depth": 3,
                                 "holdout_every": 4, "cpu_threads": 1, "samples_per_epoch": 0},
    "target__xseg_model": {"epochs": 1, "batch_size": 4, "width": 4, "depth": 4, "resolution": 64, "holdout_every": 4,
                           "samples_per_epoch": 0, "cpu_threads": 1},
    "pair__lora_adapter": {"epochs": 2, "batch_size": 4, "rank": 1, "alpha": 2.0, "holdout_every": 4,
                           "samples_per_epoch": 0, "cpu_threads": 1},
}


def tiny_run_config(*ops: str) -> dict:
    """Run config with the tiny trainings for `ops` (all of them when none are named)."""
    return {"ops": {op: {"config": dict(TINY_TRAINING[op])} for op in ops or TINY_TRAINING}}


class Project:
    """A throwaway facepipe project: media folder, store and Dagster instance in tmp."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.store = root / "store"
        self.store_root = str(self.store)  # a test may point this at object storage (a URL)
        self.store_cache = str(root / "store-cache")  # this "machine's" copies when it does
        self.instance = DagsterInstance.ephemeral()
        self.models = root / "models"
        self.assets = {role: build_prep_assets(role) for role in PARTITIONS}
        self.curation = {role: build_curation_asset(role) for role in PARTITIONS}
        self.curated = {role: [*self.assets[role], self.curation[role]] for role in PARTITIONS}  # preparation + curation
        self.target_assets = [*self.curated["target"], xseg_model, xseg_holdout_iou, target_masks]
        self.pair_assets = [*PAIR_ASSETS, *PAIR_CHECKS]
        self.profile_assets = [*self.curated["identity"], identity_profile, identity_profile_is_usable]
        self.identity_assets = [*self.curated["identity"], identity_profile, identity_profile_is_usable, identity_model]

    def folder(self, role: str, key: str) -> Path:
        folder = self.data / ("identities" if role == "identity" else "targets") / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def materialize(self, role: str, key: str, run_config: dict | None = None, raise_on_error: bool = True, assets=None):
        for dimension, part in zip(("identity", "target"), key.split("|")) if role == "pair" else [(role, key)]:
            if part not in self.instance.get_dynamic_partitions(dimension):
                self.instance.add_dynamic_partitions(dimension, [part])
        settings = FacepipeSettings(data_root=str(self.data), store_root=self.store_root,
                                    store_cache=self.store_cache, models_root=str(self.models))
        # The whole graph, so every input resolves; only `assets` (default: the role's preparation) run.
        chosen = assets or self.assets[role]
        keys = [key for definition in chosen for key in definition.keys]
        graph = [*self.curated["identity"], *self.curated["target"], identity_profile, identity_model, xseg_model,
                 target_masks, *PAIR_ASSETS, identity_profile_is_usable, xseg_holdout_iou, *PAIR_CHECKS]
        graph = [*graph, *(definition for definition in chosen if definition not in graph)]
        return materialize(
            graph,
            selection=AssetSelection.assets(*keys),
            instance=self.instance,
            partition_key=key,
            resources={"settings": settings, STORE_INPUT: store_input},
            run_config=run_config,
            raise_on_error=raise_on_error,
        )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models on 2 shared cores: two OpenMP threads competing with other work ran them
    5-20x slower than one (measured), so model tests use one and restore the count after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 server (moto) for the whole session, reachable over HTTP by worker processes too."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket; s3fs is pointed at the local endpoint the way a user points it at MinIO
    (FSSPEC_S3_ENDPOINT_URL, which fsspec reads into this config at import)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", s3_endpoint)  # for worker processes
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    name = f"facepipe-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return f"s3://{name}/store"


def _mount(*args: str) -> bool:
    import subprocess

    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only():
    """`read_only(folder)` makes a folder read-only for this test, for real: a read-only bind mount
    (EROFS) where the test runs as root (root ignores file modes), else its files' write bits
    removed (EACCES). Undone at teardown."""
    import stat
    import subprocess

    undo = []

    def make(folder: Path) -> str:
        if os.geteuid() == 0:
            if not (_mount("--bind", str(folder), str(folder)) and _mount("-o", "remount,ro,bind", str(folder))):
                subprocess.run(["umount", str(folder)], capture_output=True)
                pytest.skip("cannot bind-mount read-only here")
            undo.append(lambda: subprocess.run(["umount", str(folder)], check=True))
            return "EROFS"
        paths = [folder, *folder.rglob("*")]
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        undo.append(lambda: [p.chmod(m) for p, m in modes.items()])
        return "EACCES"

    yield make
    for action in reversed(undo):
        action()


@pytest.fixture
def small_disk():
    """`small_disk(folder, megabytes)` mounts a tmpfs of that size on `folder` (root only), so
    writes beyond it fail with ENOSPC like a full disk. Unmounted at teardown."""
    import subprocess

    mounted = []

    def make(folder: Path, megabytes: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={int(megabytes * 1024)}k", "tmpfs", str(folder)):
            pytest.skip("needs root to mount a small tmpfs (a real full disk)")
        mounted.append(folder)

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=True)
