"""What `facepipe build` reads and checks before anything runs: the data root it was given
(never the checkout's data/), pairs.toml and the partition folders named on the command line."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facepipe import cli
from facepipe.store import ArtifactStore


@pytest.fixture
def project_env(tmp_path, monkeypatch):
    """A throwaway instance, store and models folder, FACEPIPE_DATA unset (as for a new user);
    returns a data root that is not the working directory's data/."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("FACEPIPE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("FACEPIPE_MODELS", str(tmp_path / "models"))
    monkeypatch.delenv("FACEPIPE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "targets" / "only_here").mkdir(parents=True)  # a same-named folder in ./data
    return tmp_path / "elsewhere"


def test_build_reads_media_from_the_data_root_it_was_given(project_env, tmp_path, monkeypatch):
    """`facepipe --data-root X build` read media from ./data: the settings' default was taken
    when facepipe.resources was imported, before the command set FACEPIPE_DATA."""
    folder = project_env / "targets" / "only_here"
    folder.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # decodable, faceless
    cv2.imwrite(str(folder / "still.png"), noise)
    assert not cli.main(["--data-root", str(project_env), "build", "--role", "target"]) == 0  # no face: fails later
    record = ArtifactStore(tmp_path / "store").current_record("target/media", "only_here")
    assert [f for f in record["files"]] == ["media.json"] and record["metadata"]["files"] == 1
    # a second build in the same process, from another root, reads that root
    other = tmp_path / "third"
    (other / "targets" / "only_here").mkdir(parents=True)
    cv2.imwrite(str(other / "targets" / "only_here" / "a.png"), noise)
    cv2.imwrite(str(other / "targets" / "only_here" / "b.png"), noise[::-1])
    cli.main(["--data-root", str(other), "build", "--role", "target"])
    assert ArtifactStore(tmp_path / "store").current_record("target/media", "only_here")["metadata"]["files"] == 2
