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
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
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
