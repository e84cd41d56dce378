"""No silent wrong results: every mismatch is refused and every error is one line that names the fix."""

import json
import shutil

import pytest
import torch

from conftest import one_line_error
from tstrain.cli import main
from tstrain.config import load_config
from tstrain.data.prepare import PrepareOptions, prepare_data
from tstrain.data.tokens import TokenData
from tstrain.errors import CheckpointError, ConfigError, DataError
from tstrain.studies.runs import run_or_reuse
from tstrain.train.loop import train


def test_a_reused_run_must_have_the_settings_asked_for(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.steps": 4, "tst.ratio": 0.5})
    first = run_or_reuse(cfg, tmp_path / "run")
    assert run_or_reuse(cfg, tmp_path / "run") == first  # the same settings: reused
    with pytest.raises(ConfigError, match=r"other settings \(tst.bag_size: saved 4, now 2; optim.lr: saved 0.003"):
        run_or_reuse(cfg.with_values({"tst.bag_size": 2, "optim.lr": 0.01}), tmp_path / "run")


def test_a_swapped_tokenizer_is_refused(data_dir, tmp_path):
    data = shutil.copytree(data_dir, tmp_path / "data")
    tok = json.loads((data / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zzz-new"] = len(tok["model"]["vocab"]) + 100
    (data / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(DataError, match="is not the tokenizer these tokens were made with"):
        TokenData(data)


def test_eval_refuses_data_made_with_another_tokenizer(tiny_cfg, data_dir, tmp_path, capsys):
    from conftest import make_corpus

    train(tiny_cfg(**{"train.steps": 4, "tst.ratio": 0.5}), tmp_path / "run")
    other = prepare_data([make_corpus(tmp_path / "c.txt", docs=300, seed=5)], tmp_path / "other",
                         PrepareOptions(train_tokenizer=300, doc_separator="\n\n\n", val_fraction=0.05, progress=False))
    assert other["vocab_size"] <= 320  # a vocabulary the model covers: only the tokenizer check can catch it
    one_line_error(capsys, ["eval", str(tmp_path / "run"), "--data", str(tmp_path / "other")],
                   "was prepared with another tokenizer than the model's")
    assert main(["eval", str(tmp_path / "run"), "--data", str(data_dir), "--windows", "2"]) == 0


def test_resuming_on_other_data_is_refused_and_on_a_moved_copy_accepted(tiny_cfg, data_dir, tmp_path):
    from conftest import make_corpus

    flags = {"train.steps": 8, "tst.ratio": 0.5, "train.checkpoint_every": 2}
    train(tiny_cfg(**flags), tmp_path / "whole")
    from test_train import numbers, train_crashing_at

    train_crashing_at(5, tiny_cfg(**flags), tmp_path / "run")
    prepare_data([make_corpus(tmp_path / "c.txt", docs=1500, seed=9)], tmp_path / "other",
                 PrepareOptions(train_tokenizer=320, doc_separator="\n\n\n", val_fraction=0.05, progress=False))
    with pytest.raises(DataError, match="was trained on other data"):
        train(tiny_cfg(**flags, **{"data.path": str(tmp_path / "other")}), tmp_path / "run", resume=True)
    moved = shutil.copytree(data_dir, tmp_path / "moved")
    train(tiny_cfg(**flags, **{"data.path": str(moved)}), tmp_path / "run", resume=True)
    from tstrain.train.metrics import read_jsonl

    resumed, whole = read_jsonl(tmp_path / "run" / "metrics.jsonl"), read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    assert numbers(resumed) == numbers(whole)
    assert load_config(config_file=tmp_path / "run" / "config.toml").data.path.startswith("/")  # absolute


def test_a_run_read_in_another_order_is_neither_resumed_nor_reused(data_dir, tmp_path, capsys):
    # A run dir whose data.json records no reader order (or has no data.json) was read by the stored
    # permutation: resuming it in this reader's order would reread some tokens and skip others, and
    # reusing it would put a run of another order in a report. Both are refused, nothing is changed.
    from conftest import cli_args
    from tstrain.data.reader import FIRST_READER_ORDER, READER_ORDER

    run, flags = tmp_path / "run", {"train.steps": 4}
    assert main(cli_args(data_dir, run, **flags)) == 0
    identity, cfg = run / "data.json", load_config(config_file=run / "config.toml")
    recorded = json.loads(identity.read_text())
    assert recorded["reader_order"] == READER_ORDER
    assert run_or_reuse(cfg, run)["steps"] == 4  # the same order: reused
    for was, order in (({k: v for k, v in recorded.items() if k != "reader_order"}, FIRST_READER_ORDER),
                       ({**recorded, "reader_order": "some-later-order"}, "some-later-order")):
        identity.write_text(json.dumps(was))
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        one_line_error(capsys, cli_args(data_dir, run, resume=True, **flags),
                       f"read its data in the order '{order}', and this tstrain reads them in '{READER_ORDER}'",
                       "Finish the run with the tstrain version that started it, or start a new run in another --out")
        with pytest.raises(ConfigError, match=f"other settings \\(reader order: the run read its data in '{order}'"):
            run_or_reuse(cfg, run)
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    identity.unlink()  # from before data.json was written: the stored permutation too, for both
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    one_line_error(capsys, cli_args(data_dir, run, resume=True, **flags),
                   f"read its data in the order '{FIRST_READER_ORDER}', and this tstrain reads them in "
                   f"'{READER_ORDER}'")
    with pytest.raises(ConfigError, match=f"reader order: the run read its data in '{FIRST_READER_ORDER}'"):
        run_or_reuse(cfg, run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_when_every_checkpoint_is_corrupt_the_run_is_refused_not_restarted(tiny_cfg, tmp_path):
    flags = {"train.steps": 8, "tst.ratio": 0.5, "train.checkpoint_every": 2}
    from test_train import train_crashing_at

    train_crashing_at(7, tiny_cfg(**flags), tmp_path / "run")
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    for c in ckpts:
        (c / "model.safetensors").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        with pytest.raises(CheckpointError, match=f"none of the {len(ckpts)} checkpoints .* verifies"):
            train(tiny_cfg(**flags), tmp_path / "run", resume=True)
    assert sorted((tmp_path / "run" / "checkpoints").iterdir()) == ckpts  # nothing pruned


def test_a_run_whose_phase_2_rounds_to_no_step_is_refused(tiny_cfg):
    with pytest.raises(ConfigError, match="switches at step 5 and leaves no phase-2 step"):
        tiny_cfg(**{"train.steps": 5, "tst.ratio": 0.95})


def test_text_that_is_not_utf8_is_counted_warned_and_past_a_share_refused(data_dir, tmp_path):
    tok = data_dir / "tokenizer.json"
    good = "the cat sat on the mat. " * 40
    mostly = tmp_path / "mostly.txt"
    mostly.write_bytes(((good + "\n\n\n") * 30).encode() + b"caf\xe9 ")  # one latin-1 byte among many characters
    with pytest.warns(UserWarning, match="1 characters .* were not valid UTF-8"):
        m = prepare_data([mostly], tmp_path / "a", PrepareOptions(tokenizer=tok, doc_separator="\n\n\n",
                         val_fraction=0.2, progress=False))
    assert m["replaced_characters"] == 1
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("caf\xe9 na\xefve \n\n\n" * 200).encode("latin-1"))
    with pytest.raises(DataError, match=r"were not valid UTF-8.*--max-bad-text"):
        prepare_data([latin], tmp_path / "b", PrepareOptions(tokenizer=tok, doc_separator="\n\n\n", val_fraction=0.2,
                     progress=False))
    assert not (tmp_path / "b" / "manifest.json").exists() and not list((tmp_path / "b").glob("*.bin*"))
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(DataError, match="NUL bytes: it is a binary file"):
        prepare_data([binary], tmp_path / "c", PrepareOptions(tokenizer=tok, progress=False))


def test_prepare_data_never_overwrites_a_data_dir_unasked(data_dir, tmp_path, capsys):
    from conftest import make_corpus

    text = make_corpus(tmp_path / "c.txt", docs=300)
    args = ["prepare-data", "--input", str(text), "--tokenizer", str(data_dir / "tokenizer.json"), "--doc-separator",
            "\n\n\n", "--val-fraction", "0.05", "--no-progress", "--out", str(tmp_path / "d")]
    assert main(args) == 0
    before = (tmp_path / "d" / "train-00000.bin").read_bytes()
    one_line_error(capsys, args, "already holds prepared data", "--overwrite")
    assert (tmp_path / "d" / "train-00000.bin").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_prepare_data_refuses_bad_worker_counts_and_shard_sizes(data_dir, tmp_path, capsys):
    base = ["prepare-data", "--input", str(tmp_path / "c.txt"), "--tokenizer", str(data_dir / "tokenizer.json"),
            "--out", str(tmp_path / "never"), "--no-progress"]
    (tmp_path / "c.txt").write_text("the cat sat on the mat")
    one_line_error(capsys, base + ["--workers", "0"], "--workers must be", "at least 1; got 0")
    one_line_error(capsys, base + ["--shard-tokens", "-5"], "--shard-tokens must be", "got -5")
    assert not (tmp_path / "never").exists()


def test_bad_inputs_are_one_line_errors(data_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = ["--tokenizer", str(data_dir / "tokenizer.json"), "--no-progress"]
    out = tmp_path / "never"
    one_line_error(capsys, ["prepare-data", "--input", str(tmp_path / "missing.txt"), "--out", str(out), *tok],
                   "missing.txt does not exist")
    assert not out.exists()  # refused before anything was created
    pq.write_table(pa.table({"text": list(range(50))}), tmp_path / "ints.parquet")
    one_line_error(capsys, ["prepare-data", "--input", str(tmp_path / "ints.parquet"), "--out", str(out), *tok],
                   "the 'text' column holds int64, not strings")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really parquet")
    one_line_error(capsys, ["prepare-data", "--input", str(tmp_path / "corrupt.parquet"), "--out", str(out), *tok],
                   "is not a readable parquet file")
    (tmp_path / "t.jsonl").write_bytes(b'{"text": "caf\xe9 ' + b"x" * 5000 + b'"}\n' + b'{"text": 5}\n')
    one_line_error(capsys, ["prepare-data", "--input", str(tmp_path / "t.jsonl"), "--out", str(out), *tok],
                   "t.jsonl:2: 'text' is a int, not a string")
    (tmp_path / "notatok.json").write_text('{"hello": 1}')
    one_line_error(capsys, ["prepare-data", "--input", str(tmp_path / "t.jsonl"), "--out", str(out), "--tokenizer",
                            str(tmp_path / "notatok.json")], "is not a tokenizers tokenizer.json")
    (tmp_path / "afile").write_text("x")
    one_line_error(capsys, ["prepare-data", "--input", str(tmp_path / "t.jsonl"), "--out",
                            str(tmp_path / "afile" / "d"), *tok], "cannot write to")


def test_ctrl_c_stops_with_one_line_that_says_how_to_resume(data_dir, tmp_path, capsys, monkeypatch):
    from tstrain.train.loop import Trainer

    real = Trainer.train_step

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = tmp_path / "run"
    code = main(["train", "--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--no-progress", "--steps",
                 "8", "--set", "train.checkpoint_every=2"])
    err = capsys.readouterr().err.strip()
    assert code == 130 and "\n" not in err and "Traceback" not in err
    assert "newest checkpoint is step-00000002" in err and f"tstrain train --out {out} --resume" in err


def test_a_full_disk_while_checkpointing_is_one_clear_error_and_leaves_no_temporary_dir(
        tiny_cfg, tmp_path, monkeypatch):
    from tstrain.train import checkpoint

    real = torch.save

    def full(obj, path, *a, **k):
        if str(path).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint of step 2 .* MiB free there"):
        train(tiny_cfg(**{"train.steps": 4, "tst.ratio": 0.5}), tmp_path / "run")
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
