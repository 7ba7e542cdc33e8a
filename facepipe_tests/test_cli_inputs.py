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


PAIR_SHAPE = 'Each entry is [[pair]] with identity = "<key>" and target = "<key>".'


def media_folders(data: Path, identities=(), targets=()) -> None:
    for role, keys in (("identities", identities), ("targets", targets)):
        for key in keys:
            (data / role / key).mkdir(parents=True, exist_ok=True)


def no_runs_started(tmp_path: Path) -> bool:
    from dagster import DagsterInstance

    if not (tmp_path / "dagster_home" / "storage").exists():
        return True
    with DagsterInstance.get() as instance:
        return not instance.get_runs()


@pytest.mark.parametrize("content, expected", [
    (b'[[pair]]\nidentity = "hopper"\ntarget = "astr\xf6naut"\n',
     "facepipe: {pairs}: not UTF-8 text (byte 0xf6 at line 3): save it as UTF-8"),
    (b'[[pair]]\nidentity = "hopper"\n',
     "facepipe: {pairs}: pair 1 (identity = \"hopper\") has no target. " + PAIR_SHAPE),
    (b'[[pair]]\nidentity = "hopper"\ntarget = "astronaut"\n\n[[pair]]\ntarget = "astronaut"\n',
     "facepipe: {pairs}: pair 2 (target = \"astronaut\") has no identity. " + PAIR_SHAPE),
    (b'[[pair]]\nidentity = "hopper"\ntarget = 3\n',
     "facepipe: {pairs}: pair 1: target = 3 is not a partition key in quotes. " + PAIR_SHAPE),
    (b'pair = "hopper|astronaut"\n',
     "facepipe: {pairs}: 'pair' must be a list of [[pair]] tables. " + PAIR_SHAPE),
    (b'[[pair]]\nidentity = "hopper"\ntarget = "astronaut"\n\n[[pair]]\nidentity = "hopper"\ntarget = "nobody"\n',
     "facepipe: {pairs}: pair hopper|nobody: no target folder {data}/targets/nobody: create it or remove the pair"),
    (b'[[pair]\nidentity = "hopper"\n',
     "facepipe: {pairs}: Expected ']]' at the end of an array declaration (at line 1, column 7). " + PAIR_SHAPE),
    (b'[[pair]]\nidentity = "hopper"\ntarget = "astronaut"\nlora = { turn = 0.5 }\n',
     "facepipe: {pairs}: pair 1: lora is not a table of settings a pair can set; write lora_adapter or "
     "onnx_export = {{ <field> = <value>, ... }}"),
])
def test_pairs_toml_is_checked_before_any_run_with_one_line(project_env, tmp_path, capsys, content, expected):
    """A broken pairs.toml used to be read only after every identity and target had been built
    (hours with real training), and a non-UTF-8 file gave a traceback."""
    media_folders(project_env, ["hopper"], ["astronaut"])
    (project_env / "pairs.toml").write_bytes(content)
    assert cli.main(["--data-root", str(project_env), "build"]) == 2
    out, err = capsys.readouterr()
    assert err == expected.format(pairs=project_env / "pairs.toml", data=project_env) + "\n"
    assert out == "" and no_runs_started(tmp_path)


def test_a_partitions_settings_file_is_checked_before_any_run(project_env, tmp_path, capsys):
    media_folders(project_env, ["hopper"], ["astronaut"])
    (project_env / "identities" / "hopper" / "settings.toml").write_text("[identity_modle]\nturn = 0.5\n")
    assert cli.main(["--data-root", str(project_env), "build"]) == 2
    out, err = capsys.readouterr()
    assert err == (f"facepipe: {project_env}/identities/hopper/settings.toml: identity_modle is not a table of settings "
                   "this file can hold; write tables [identity_model] whose keys are that asset's config fields "
                   "(README, 'Settings of one partition')\n")
    assert out == "" and no_runs_started(tmp_path)


@pytest.mark.parametrize("args, expected", [
    (["--partition", "nobody"], "facepipe: no identity or target folder 'nobody' under {data} "
                                "(identities: hopper, solo; targets: astronaut): create "
                                "{data}/identities/nobody or {data}/targets/nobody, or pick one of those"),
    (["--role", "target", "--partition", "solo"], "facepipe: no target folder 'solo' under {data}: 'solo' is an "
                                                  "identity ({data}/identities/solo); use --role identity or leave --role out"),
    (["--partition", "Solo"], "facepipe: invalid partition key 'Solo': use lowercase letters, digits, '_' and '-', "
                              "starting with a letter or digit, at most 64 characters (rename the folder, e.g. "
                              "'Jane Doe' -> 'jane_doe')"),
])
def test_partition_folders_are_checked_before_any_run(project_env, tmp_path, capsys, args, expected):
    media_folders(project_env, ["hopper", "solo"], ["astronaut"])
    assert cli.main(["--data-root", str(project_env), "build", *args]) == 2
    out, err = capsys.readouterr()
    assert err == expected.format(data=project_env) + "\n"
    assert out == "" and no_runs_started(tmp_path)


def test_a_partition_builds_its_roles_then_the_other_side_and_the_declared_pairs(project_env):
    """`build --partition solo` for a key that is only an identity: the identity, then what its
    declared pairs need (the targets, cache hits when built before), then those pairs; a pair
    that does not involve the key is left alone, and so is a broken declaration it does not use."""
    media_folders(project_env, ["hopper", "solo"], ["astronaut", "street"])
    (project_env / "pairs.toml").write_text('[[pair]]\nidentity = "solo"\ntarget = "street"\n\n'
                                            '[[pair]]\nidentity = "hopper"\ntarget = "astronaut"\n\n'
                                            '[[pair]]\nidentity = "solo"\ntarget = "astronaut"\n\n'
                                            '[[pair]]\nidentity = "hopper"\ntarget = "gone"\n')
    plan = cli.plan_build(project_env, ["identity", "target"], "solo", pairs=True)
    assert [run.label for run in plan] == ["identity/solo", "target/astronaut", "target/street",
                                           "pair/solo|astronaut", "pair/solo|street"]
    assert [run.job for run in plan] == ["identity_job", "target_job", "target_job", "pair_job", "pair_job"]
    assert plan[3].key == "solo|astronaut"
    everything = cli.plan_build(project_env, ["identity", "target"], None, pairs=False)
    assert [run.label for run in everything] == ["identity/hopper", "identity/solo", "target/astronaut", "target/street"]
    with pytest.raises(cli.BuildInputError, match="pair hopper|gone: no target folder"):
        cli.plan_build(project_env, ["identity", "target"], None, pairs=True)
