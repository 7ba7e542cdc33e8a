"""The media sensor and the `facepipe register` command against a real (ephemeral) instance."""

import os

import cv2
import numpy as np
from dagster import DagsterInstance, build_sensor_context

from facepipe import cli
from facepipe.automation.discovery import media_sensor
from facepipe.resources import FacepipeSettings


def evaluate(instance, data, cursor=None):
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"settings": FacepipeSettings(data_root=str(data))})
    return media_sensor(context)


def add_image(folder, name="a.png", value=100):
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), np.full((64, 64, 3), value, np.uint8))


def test_sensor_registers_new_folders_and_requests_runs_only_for_changes(tmp_path):
    instance = DagsterInstance.ephemeral()
    data = tmp_path / "data"
    add_image(data / "identities" / "alice")
    add_image(data / "targets" / "street")
    (data / "identities" / "Bad Name").mkdir()

    first = evaluate(instance, data)
    added = {(r.partitions_def_name, tuple(r.partition_keys)) for r in first.dynamic_partitions_requests}
    assert added == {("identity", ("alice",)), ("target", ("street",))}
    assert sorted((r.job_name, r.partition_key) for r in first.run_requests) == [("identity_job", "alice"), ("target_job", "street")]

    for request in first.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    second = evaluate(instance, data, first.cursor)
    assert second.run_requests == [] and second.dynamic_partitions_requests == []

    add_image(data / "identities" / "alice", "b.png", 50)  # a changed folder
    third = evaluate(instance, data, second.cursor)
    assert [(r.job_name, r.partition_key) for r in third.run_requests] == [("identity_job", "alice")]
    assert third.dynamic_partitions_requests == []


def test_register_command_adds_partitions_and_skips_bad_names(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEPIPE_DATA", "")  # the CLI sets it; monkeypatch restores it
    (tmp_path / "home").mkdir()
    data = tmp_path / "data"
    add_image(data / "identities" / "bob")
    (data / "identities" / "x|y").mkdir()
    assert cli.main(["--data-root", str(data), "register"]) == 0
    out = capsys.readouterr()
    assert "identity: bob" in out.out and "x|y" in out.err
    with DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
        assert instance.get_dynamic_partitions("identity") == ["bob"]


def test_build_with_a_broken_pairs_file_says_which_file_and_how_to_fix_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEPIPE_DATA", "")
    (tmp_path / "home").mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.toml").write_text('[[pair]]\nidentity = "Jane Doe"\n')
    assert cli.main(["--data-root", str(data), "build"]) == 2
    error = capsys.readouterr().err
    assert "pairs.toml" in error and "Jane Doe" in error and "[[pair]]" in error
