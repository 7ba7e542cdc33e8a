"""Settings of one partition (facepipe.partition_settings): settings.toml beside an identity's or a
target's media, tables in a pair's entry of pairs.toml; checked like run config, errors name the file."""

import pytest

from facepipe.assets.identity import IdentityModelConfig
from facepipe.assets.pair import ExportConfig, LoraConfig
from facepipe.media import candidate_paths
from facepipe.pairs import PairsFileError, declared_pairs
from facepipe.partition_settings import PartitionSettingsError, asset_settings, with_settings


def identity_folder(data, key="jane"):
    folder = data / "identities" / key
    folder.mkdir(parents=True)
    return folder


def test_an_identitys_settings_apply_to_its_identity_model_only(tmp_path):
    folder = identity_folder(tmp_path)
    (folder / "settings.toml").write_text("[identity_model]\nturn = 0.5\nseed = 3\n")
    where, values = asset_settings(tmp_path, "identity/identity_model", "jane")
    assert where == folder / "settings.toml" and values == {"turn": 0.5, "seed": 3}
    config = with_settings(IdentityModelConfig(epochs=600), values, str(where))
    # the partition's values win, the run's others stay
    assert (config.turn, config.seed, config.epochs, config.flip) == (0.5, 3, 600, IdentityModelConfig().flip)
    assert asset_settings(tmp_path, "identity/curated_faces", "jane")[1] == {}  # not a setting a partition sets
    identity_folder(tmp_path, "other")
    assert asset_settings(tmp_path, "identity/identity_model", "other")[1] == {}  # no file: the run's config
    # the file is not media
    (folder / "talk.mp4").write_bytes(b"")
    assert [name for name, _ in candidate_paths(folder)] == ["talk.mp4"]


@pytest.mark.parametrize("text, says", [
    ("[identity_modle]\nturn = 0.5\n", "identity_modle is not a table of settings this file can hold; write tables [identity_model]"),
    ("turn = 0.5\n", "turn is not a table of settings"),
    ("[identity_model\nturn = 0.5\n", "not valid TOML"),
])
def test_a_settings_file_that_cannot_be_used_is_one_line_naming_it(tmp_path, text, says):
    (identity_folder(tmp_path) / "settings.toml").write_text(text)
    with pytest.raises(PartitionSettingsError) as error:
        asset_settings(tmp_path, "identity/identity_model", "jane")
    assert str(error.value).startswith(str(tmp_path / "identities" / "jane" / "settings.toml")) and says in str(error.value)


def test_settings_are_checked_as_run_config_is():
    with pytest.raises(PartitionSettingsError, match=r"^settings.toml \[identity_model\]: no field 'trun' \(its fields: .*turn"):
        with_settings(IdentityModelConfig(), {"trun": 0.5}, "settings.toml [identity_model]")
    with pytest.raises(PartitionSettingsError, match=r"^where: turn = 'half': Input should be a valid number"):
        with_settings(IdentityModelConfig(), {"turn": "half"}, "where")


def test_a_pairs_entry_carries_that_pairs_settings(tmp_path):
    (tmp_path / "pairs.toml").write_text(
        '[[pair]]\nidentity = "jane"\ntarget = "talk"\nlora_adapter = { turn = 0.5, seed = 1 }\n'
        '[pair.onnx_export]\nsharpen = 0.0\n\n'
        '[[pair]]\nidentity = "jane"\ntarget = "street"\n')
    assert declared_pairs(tmp_path) == [("jane", "street"), ("jane", "talk")]
    where, values = asset_settings(tmp_path, "pair/lora_adapter", "jane|talk")
    assert where == tmp_path / "pairs.toml" and values == {"turn": 0.5, "seed": 1}
    assert with_settings(LoraConfig(), values, "x").turn == 0.5
    assert with_settings(ExportConfig(), asset_settings(tmp_path, "pair/onnx_export", "jane|talk")[1], "x").sharpen == 0.0
    assert asset_settings(tmp_path, "pair/lora_adapter", "jane|street")[1] == {}


def test_a_pairs_entry_with_settings_it_cannot_have_is_told_before_anything_builds(tmp_path):
    (tmp_path / "pairs.toml").write_text('[[pair]]\nidentity = "jane"\ntarget = "talk"\nlora = { turn = 0.5 }\n')
    with pytest.raises(PairsFileError, match=r"pairs.toml: pair 1: lora is not a table of settings a pair can set; "
                                             r"write lora_adapter or onnx_export = \{ <field> = <value>, ... \}"):
        declared_pairs(tmp_path)  # what `facepipe build` checks before any run starts
    (tmp_path / "pairs.toml").write_text('[[pair]]\nidentity = "jane"\ntarget = "talk"\nlora_adapter = { seed = 1 }\n'
                                         '[[pair]]\nidentity = "jane"\ntarget = "talk"\nlora_adapter = { seed = 2 }\n')
    with pytest.raises(PairsFileError, match="pair jane|talk is declared twice with different lora_adapter settings"):
        asset_settings(tmp_path, "pair/lora_adapter", "jane|talk")
