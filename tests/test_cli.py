"""The command line: help lists every field, verbs run end to end, errors are one clear line."""

import json

import pytest

from tstrain.cli import build_parser, main
from tstrain.config import field_help


def test_train_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--steps", "--bag-size", "--ratio", "--seed", "--batch-size", "--seq-len", "--lr", "--resume",
                 "--set"):
        assert flag in text
    for f in field_help():
        assert f"--{f['key']}" in text
    assert "(default: 0.3)" in text  # tst.ratio


def test_prepare_and_train_from_the_command_line(tmp_path, capsys):
    from conftest import make_corpus

    text = make_corpus(tmp_path / "c.txt", docs=600)
    assert main(["prepare-data", "--input", str(text), "--train-tokenizer", "300", "--doc-separator", "\n\n\n",
                 "--out", str(tmp_path / "d"), "--val-fraction", "0.05", "--no-progress"]) == 0
    args = ["train", "--preset", "tiny", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--steps", "6",
            "--bag-size", "2", "--ratio", "0.5", "--seed", "3", "--batch-size", "4", "--seq-len", "16", "--lr", "0.001",
            "--set", "train.eval_every=3", "--log.every", "2", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("\n{") + 1:])  # after the lines the trainer prints first
    assert summary["switch_step"] == 3 and summary["data_tokens"] == 4 * 16 * (2 * 3 + 3)
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert "seed = 3" in saved and "lr = 0.001" in saved and "every = 2" in saved
    # `--out RUN --resume` alone picks up the saved config; the run is already complete.
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0


def test_errors_are_one_line_with_the_fix(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "error: data dir" in err and "prepare-data" in err
    assert main(["train", "--preset", "tiny", "--bag-size", "0", "--out", str(tmp_path / "r")]) == 2
    assert "tst.bag_size must be an integer >= 1" in capsys.readouterr().err


def test_batch_shows_what_a_step_reads(data_dir, tmp_path, capsys):
    flags = ["--preset", "tiny", "--data", str(data_dir), "--steps", "20", "--ratio", "0.5", "--batch-size", "8",
             "--seq-len", "16"]
    assert main(["batch", *flags, "--step", "3", "--json"]) == 0
    phase1 = json.loads(capsys.readouterr().out)
    assert [r["phase"] for r in phase1["sequences"]] == [1] * 8 and phase1["data_tokens"] == 8 * 16 * 4
    assert all(r["bag_size"] == 4 and r["input_tokens"] == 64 and r["window_tokens"] == 68 for r in phase1["sequences"])
    assert main(["batch", *flags, "--step", "12", "--json"]) == 0
    phase2 = json.loads(capsys.readouterr().out)
    offsets = [r["offset"] for r in phase2["sequences"]]
    assert [r["phase"] for r in phase2["sequences"]] == [2] * 8 and len(set(offsets)) == 8
    assert phase2["continuing_pairs"] == sum(o + 16 in set(offsets) for o in offsets)
    # A run dir gives the same layout from its saved config; --text adds the decoded start.
    run = tmp_path / "run"
    run.mkdir()
    from tstrain.config import load_config

    cfg = load_config("tiny", overrides={"data.path": str(data_dir), "train.steps": 20, "tst.ratio": 0.5,
                                         "train.batch_size": 8, "train.seq_len": 16})
    (run / "config.toml").write_text(cfg.to_toml())
    assert main(["batch", str(run), "--step", "12", "--text"]) == 0
    text = capsys.readouterr().out
    assert f"{offsets[0]:,}" in text and "'" in text.splitlines()[2]
    assert main(["batch", str(run), "--step", "20"]) == 2
    assert "--step must be in [0, 20)" in capsys.readouterr().err


PREPARE_FLAGS = ("--tokenizer", "--train-tokenizer", "--eos-token", "--val-fraction", "--doc-separator", "--text-field",
                 "--overwrite", "--max-bad-text", "--seed", "--workers", "--shard-tokens", "--no-progress")
SCALE_FLAGS = ("--sizes", "--steps", "--arms", "--seeds", "--repeat-within", "--lrs", "--tune-steps",
               "--tune-arms")


def test_prepare_data_and_scale_flags_are_their_options_fields(capsys):
    from tstrain.cli.verbs import options_of
    from tstrain.data.prepare import PrepareOptions
    from tstrain.options import option_help
    from tstrain.studies.scale import ScaleOptions

    for verb, cls, flags, default in (("prepare-data", PrepareOptions, PREPARE_FLAGS, "(default: 0.01)"),
                                      ("scale", ScaleOptions, SCALE_FLAGS, "(default: 600,2000,6000)")):
        with pytest.raises(SystemExit):
            build_parser().parse_args([verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert [f["flag"] for f in option_help(cls)] == list(flags)
        assert all(f" {flag} " in text for flag in flags) and default in text
    args = build_parser().parse_args(["scale", "--data", "d", "--out", "o", "--steps", "8,16", "--arms", "4:0.3,2:0.2",
                                      "--lrs", "1e-3", "--repeat-within", "0.1"])
    assert options_of(args) == ScaleOptions(steps=(8, 16), arms=((4, 0.3), (2, 0.2)), lrs=(0.001,), repeat_within=0.1)
    args = build_parser().parse_args(["prepare-data", "--input", "x", "--out", "o", "--tokenizer", "t", "--workers",
                                      "3", "--doc-separator", r"\n\n", "--no-progress", "--overwrite"])
    assert options_of(args) == PrepareOptions(tokenizer="t", workers=3, doc_separator="\n\n", progress=False,
                                              overwrite=True)
    assert options_of(build_parser().parse_args(["prepare-data", "--input", "x", "--out", "o"])) == PrepareOptions()


def test_options_given_from_python_are_checked_before_anything_is_written(data_dir, tmp_path):
    from tstrain.data.prepare import PrepareOptions, prepare_data
    from tstrain.errors import ConfigError, DataError
    from tstrain.studies.scale import ScaleOptions, scale_study

    text = tmp_path / "c.txt"
    text.write_text("the cat sat on the mat")
    tok = data_dir / "tokenizer.json"
    for options, message in ((PrepareOptions(tokenizer=tok, val_fraction=float("nan")), "--val-fraction must be in"),
                             (PrepareOptions(tokenizer=tok, workers=0), "--workers must be"),
                             (PrepareOptions(), "give exactly one of --tokenizer")):
        with pytest.raises(DataError, match=message):
            prepare_data([text], tmp_path / "data", options)
    for options, message in ((ScaleOptions(sizes=("tiny",), steps=(0, 8)), "--steps values must be at least 1"),
                             (ScaleOptions(sizes=("tiny", "huge")), "--sizes takes preset names; unknown: huge"),
                             (ScaleOptions(sizes=("tiny",), repeat_within=float("inf")), "--repeat-within must be")):
        with pytest.raises(ConfigError, match=message):
            scale_study(str(data_dir), tmp_path / "study", options)
    assert not (tmp_path / "data").exists() and not (tmp_path / "study").exists()
