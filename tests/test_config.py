"""Config: presets, overrides, and validation messages that name the fix."""

import tomllib

import pytest

from tstrain.config import Config, ConfigError, apply_overrides, load_config, preset_names


def test_presets_load_and_round_trip_through_toml():
    assert {"tiny", "cpu-small"} <= set(preset_names())
    cfg = load_config("tiny")
    assert cfg.tst.bag_size == 4 and cfg.model.hidden_size == 64
    again = apply_overrides(Config(), tomllib.loads(cfg.to_toml()))
    assert again == cfg


def test_overrides_coerce_strings_from_the_command_line():
    cfg = load_config("tiny", overrides={"train.steps": "12", "tst.ratio": "0.25", "model.tie_embeddings": "true"})
    assert cfg.train.steps == 12 and cfg.tst.ratio == 0.25 and cfg.model.tie_embeddings is True
    assert cfg.switch_step == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"tst.bag_size": 0}, "tst.bag_size must be an integer >= 1"),
        ({"tst.ratio": 1.0}, r"tst.ratio must be in \[0, 1\)"),
        ({"tst.ratio": -0.1}, r"tst.ratio must be in \[0, 1\)"),
        ({"train.seq_len": 0}, "train.seq_len must be an integer >= 1"),
        ({"tst.variant": "middle"}, "tst.variant must be one of"),
        ({"tst.weights": "cosine"}, "tst.weights must be one of"),
        ({"train.batch_size": 6, "train.grad_accum": 4}, "must be a multiple of train.grad_accum"),
        ({"train.steps": "ten"}, "train.steps must be an integer; got 'ten'"),
        ({"tst.reset_optimizer": "maybe"}, "tst.reset_optimizer must be true or false; got 'maybe'"),
        ({"train.stepz": 3}, "unknown config field 'train.stepz'"),
        ({"trian.steps": 3}, "unknown config section 'trian'"),
        ({"train.steps": 3, "tst.ratio": 0.1}, "rounds to no phase-1 step"),
        ({"model.hidden_size": 66}, "must be a multiple of model.num_heads"),
        ({"model.max_position_embeddings": 16}, "is below train.seq_len"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=overrides)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available presets: .*tiny"):
        load_config("huge")


def test_bag_size_1_has_no_phase_1():
    assert load_config("tiny", overrides={"tst.bag_size": 1, "tst.ratio": 0.5}).switch_step == 0


def test_a_config_file_is_read_whole_or_refused_by_name(tmp_path, capsys, data_dir):
    from conftest import one_line_error

    good = tmp_path / "run.toml"
    good.write_text('[train]\nsteps = 7\n[tst]\nbag_size = 3\n')
    cfg = load_config("tiny", good)
    assert (cfg.train.steps, cfg.tst.bag_size) == (7, 3)
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 7\n")
    one_line_error(capsys, ["train", "--config", str(bad), "--data", str(data_dir), "--out", str(tmp_path / "r")],
                   f"{bad} is not valid TOML", "mend it, or give another --config")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[train]\nsteps = "many"\n')
    one_line_error(capsys, ["train", "--config", str(wrong), "--data", str(data_dir), "--out", str(tmp_path / "r")],
                   f"{wrong}: ", "train.steps")
    assert not (tmp_path / "r").exists()
