"""Jobs that cannot clobber each other, model dirs that cannot run code, a model that keeps its own tokenizer,
and the rough edges of every input: each refusal is one line (exit code 2) that names the problem and the fix."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import one_line_error
from tstrain.cli import main
from tstrain.run_lock import LOCK_NAME


def child_env():
    env = {k: v for k, v in os.environ.items() if k not in ("TSTRAIN_FAULT", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1"}


def wait_for(condition, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# ----------------------------------------------------------------------------------------------
# One job per output dir
# ----------------------------------------------------------------------------------------------

SLOW_TRAIN = textwrap.dedent("""
    import sys, time
    from tstrain.config import load_config
    from tstrain.train.loop import Trainer, train
    cfg = load_config("tiny", overrides={"data.path": sys.argv[1], "log.progress": False, "train.steps": 200,
                                         "tst.ratio": 0.5, "train.checkpoint_every": 4, "train.eval_every": 0})
    slow = lambda done: time.sleep(0.3)  # slow enough to be caught running, on a loaded machine too
    if sys.argv[3] == "fit":
        Trainer(cfg, sys.argv[2], on_step=slow).fit()
    else:
        train(cfg, sys.argv[2], on_step=slow)
""")


def start_slow_run(data_dir, run, how="train"):
    """Start a slow tiny run into ``run`` in another process (``train()`` or ``Trainer.fit()``), once it has a
    checkpoint; return the process."""
    first = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, str(data_dir), str(run), how], env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: first.poll() is not None or (run / "checkpoints").is_dir()
                 and any((run / "checkpoints").iterdir()), "a checkpoint")
        assert first.poll() is None, first.stderr.read()
    except BaseException:
        first.kill()
        first.wait()
        raise
    return first


def test_a_second_train_on_a_running_run_dir_is_refused_and_a_killed_one_resumes(data_dir, tmp_path):
    run = tmp_path / "run"
    first = start_slow_run(data_dir, run)
    try:
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name == "config.toml"}
        args = [sys.executable, "-m", "tstrain", "train", "--preset", "tiny", "--data", str(data_dir),
                "--out", str(run), "--no-progress", "--lr", "1e-3", "--set", "train.steps=200"]
        for extra in ([], ["--resume"]):  # a new run and a resume are both refused while the first one runs
            second = subprocess.run(args + extra, env=child_env(), capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            err = second.stderr.strip()
            assert "\n" not in err and "Traceback" not in err, err
            assert f"is in use by another tstrain process (pid {first.pid}" in err, err
            assert f"kill {first.pid}" in err and "--resume" in err, err
        assert {p: p.read_bytes() for p in before} == before  # the second process wrote nothing
        assert first.poll() is None  # and the first goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run / LOCK_NAME).is_file()  # a SIGKILLed holder leaves its file but no lock
    resumed = subprocess.run([sys.executable, "-m", "tstrain", "train", "--out", str(run), "--resume", "--no-progress"],
                             env=child_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 200


def test_a_second_trainer_fit_on_a_running_run_dir_is_refused(data_dir, tmp_path):
    # Trainer(cfg, run).fit() holds the run dir's lock as train() does: a second one, fresh or resuming,
    # stops at once, naming the first, and writes nothing.
    from tstrain.config import load_config
    from tstrain.errors import BusyError
    from tstrain.train.loop import Trainer

    run = tmp_path / "run"
    first = start_slow_run(data_dir, run, "fit")
    try:
        saved = (run / "config.toml").read_text()
        cfg = load_config("tiny", overrides={"data.path": str(data_dir), "log.progress": False, "train.steps": 200,
                                             "optim.lr": 1e-3})
        for resume in (False, True):
            with pytest.raises(BusyError, match=rf"is in use by another tstrain process \(pid {first.pid}"):
                Trainer(cfg, run, resume=resume).fit()
        assert (run / "config.toml").read_text() == saved  # the second one wrote nothing
        assert first.poll() is None  # and the first goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


HOLD = textwrap.dedent("""
    import sys, time
    from tstrain.run_lock import locked
    with locked(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.mark.parametrize("verb", ["prepare-data", "compare", "sweep", "ablate", "scale"])
def test_every_verb_that_writes_a_dir_refuses_one_another_process_holds(data_dir, tmp_path, capsys, verb):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=child_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        train_like = ["--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--no-progress"]
        args = {"prepare-data": ["--input", str(data_dir / "manifest.json"), "--tokenizer",
                                 str(data_dir / "tokenizer.json"), "--out", str(out), "--no-progress"],
                "scale": ["--data", str(data_dir), "--out", str(out), "--sizes", "tiny", "--steps", "8"]}
        err = one_line_error(capsys, [verb, *args.get(verb, train_like)], f"{out} is in use by another tstrain "
                             f"process (pid {holder.pid}")
        assert ("--resume" in err) == (verb != "prepare-data")  # prepare-data continues when run again as it was
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing was written
    finally:
        holder.kill()
        holder.wait()


def test_a_refused_run_leaves_no_dir_it_created_and_a_lock_is_released_after_the_job(tiny_cfg, tmp_path):
    from tstrain.errors import DataError
    from tstrain.run_lock import locked
    from tstrain.train.loop import train

    with pytest.raises(DataError, match="does not exist"):
        train(tiny_cfg(**{"data.path": str(tmp_path / "no-data")}), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    train(tiny_cfg(**{"train.steps": 4}), tmp_path / "run")
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # a job that ends removes its lock file
    with locked(tmp_path / "run"):  # the job is over: its lock went with it
        pass
    assert (tmp_path / "run" / "summary.json").is_file()


# ----------------------------------------------------------------------------------------------
# Nothing in a model dir or a manifest runs code or reaches outside its dir
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A finished tiny run (its final/ model dir) and an export of it."""
    from tstrain.config import load_config
    from tstrain.model_io import export
    from tstrain.train.loop import train

    root = tmp_path_factory.mktemp("finished")
    cfg = load_config("tiny", overrides={"data.path": str(data_dir), "log.progress": False, "train.steps": 4,
                                         "tst.ratio": 0.5})
    train(cfg, root / "run")
    export(root / "run", root / "exported")
    return root / "run"


def model_verbs(model_dir, data_dir, lm_eval=False):
    verbs = [["export", str(model_dir), "--out", str(model_dir.parent / "again")],
             ["generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "2"],
             ["eval", str(model_dir), "--data", str(data_dir), "--windows", "2"]]
    return verbs + [["lm-eval", str(model_dir), "--tasks", "tstrain_smoke_mc", "--local-only"]] * lm_eval


def test_a_model_dir_that_names_its_own_code_is_refused_and_the_code_never_runs(finished_run, data_dir, tmp_path,
                                                                                 capsys):
    import shutil

    marker = tmp_path / "code-ran"
    for name, change in (("auto_map", {"auto_map": {"AutoConfig": "evil.EvilConfig",
                                                    "AutoModelForCausalLM": "evil.EvilModel"}}),
                         ("model_type", {"model_type": "evil"})):
        model = shutil.copytree(finished_run.parent / "exported", tmp_path / name)
        (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, **change}))
        for args in model_verbs(model, data_dir, lm_eval=True):
            one_line_error(capsys, args, str(model / "config.json"), "transformers", name)
        piped = subprocess.run([sys.executable, "-m", "tstrain", *model_verbs(model, data_dir)[0]], input="y\n" * 8,
                               env=child_env(), capture_output=True, text=True, timeout=120)
        assert piped.returncode == 2 and "[y/N]" not in piped.stdout + piped.stderr, piped.stderr  # never asks
    assert not marker.exists()
    model = shutil.copytree(finished_run.parent / "exported", tmp_path / "tokenizer-code")
    (model / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.Tok", None]}}))
    one_line_error(capsys, model_verbs(model, data_dir)[1], "tokenizer_config.json names its own code (auto_map)")


def test_a_model_dir_with_only_pickled_weights_is_refused_in_one_line(finished_run, data_dir, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    run = shutil.copytree(finished_run, tmp_path / "run")
    weights = run / "final" / "model.safetensors"
    torch.save(load_file(weights), run / "final" / "pytorch_model.bin")
    weights.unlink()
    for args in model_verbs(run, data_dir):
        one_line_error(capsys, args, "holds only a pickled pytorch_model.bin, which tstrain does not load")
    (run / "final" / "pytorch_model.bin").unlink()
    one_line_error(capsys, model_verbs(run, data_dir)[2], "holds no model.safetensors")


def test_a_manifest_naming_files_outside_its_dir_is_refused(data_dir, tmp_path, capsys):
    import shutil

    data = shutil.copytree(data_dir, tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    outside = shutil.copy(data / manifest["shards"]["train"][0]["file"], tmp_path / "x.bin")
    for name in ("../x.bin", str(outside), "sub/../../x.bin"):
        manifest["shards"]["train"][0]["file"] = name
        (data / "manifest.json").write_text(json.dumps(manifest))
        for verb in (["verify-data", str(data)], ["batch", "--preset", "tiny", "--data", str(data), "--step", "0"]):
            one_line_error(capsys, verb, f"names the shard file {name!r}, outside the data dir")


# ----------------------------------------------------------------------------------------------
# A run's model keeps its own tokenizer
# ----------------------------------------------------------------------------------------------


def test_a_run_keeps_its_tokenizer_when_its_data_dir_is_prepared_again(data_dir, tmp_path, capsys):
    import shutil

    from tokenizers import Tokenizer

    from conftest import make_corpus
    from tstrain.config import load_config
    from tstrain.data.prepare import PrepareOptions, prepare_data
    from tstrain.fileio import sha256_file
    from tstrain.model_io import load_trained_model
    from tstrain.train.loop import train

    data = shutil.copytree(data_dir, tmp_path / "data")
    original = Tokenizer.from_file(str(data / "tokenizer.json")).get_vocab()
    run = tmp_path / "run"
    train(load_config("tiny", overrides={"data.path": str(data), "log.progress": False, "train.steps": 4,
                                         "tst.ratio": 0.5}), run)
    recorded = json.loads((run / "data.json").read_text())["tokenizer_sha256"]
    assert sha256_file(run / "tokenizer.json") == recorded
    shutil.rmtree(run / "final")  # the checkpoint path too: no final/ tokenizer to fall back on
    prepare_data([make_corpus(tmp_path / "c.txt", docs=300, seed=5)], data, PrepareOptions(train_tokenizer=300,
                 overwrite=True, doc_separator="\n\n\n", val_fraction=0.05, progress=False))
    assert Tokenizer.from_file(str(data / "tokenizer.json")).get_vocab() != original
    assert load_trained_model(run)[1] == run / "tokenizer.json"
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    assert Tokenizer.from_file(str(tmp_path / "exported" / "tokenizer.json")).get_vocab() == original
    one_line_error(capsys, ["eval", str(run), "--data", str(data), "--windows", "2"],
                   "was prepared with another tokenizer than the model's")
    tok = json.loads((run / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zzz-edited"] = len(tok["model"]["vocab"])
    (run / "tokenizer.json").write_text(json.dumps(tok))
    for args in model_verbs(run, data_dir):
        one_line_error(capsys, args, f"{run / 'tokenizer.json'} is not the tokenizer the run trained with")


def test_a_final_model_holding_another_tokenizer_is_refused_by_every_model_verb(finished_run, data_dir, tmp_path,
                                                                                 capsys):
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    tok = json.loads((run / "final" / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zzz-edited"] = len(tok["model"]["vocab"])
    (run / "final" / "tokenizer.json").write_text(json.dumps(tok))
    lm_eval = ["lm-eval", str(run / "final"), "--tasks", "tstrain_smoke_mc", "--local-only"]
    one_line_error(capsys, lm_eval, f"{run / 'final' / 'tokenizer.json'} is not the tokenizer the run trained with")
    (run / "tokenizer.json").unlink()  # no copy of its own: the loaders fall back on final/'s, which must match too
    for args in model_verbs(run, data_dir):
        one_line_error(capsys, args, f"{run / 'final' / 'tokenizer.json'} is not the tokenizer the run trained with")


# ----------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------


def test_an_edited_config_toml_is_refused_on_resume_unless_the_field_may_change(tiny_cfg, tmp_path, capsys):
    from test_train import train_crashing_at

    run = tmp_path / "run"
    train_crashing_at(5, tiny_cfg(**{"train.steps": 8, "tst.ratio": 0.5, "train.checkpoint_every": 2}), run)
    saved = (run / "config.toml").read_text()
    assert "lr = 0.003\n" in saved and "every = 1\n" in saved
    (run / "config.toml").write_text(saved.replace("lr = 0.003\n", "lr = 0.01\n"))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    one_line_error(capsys, ["train", "--out", str(run), "--resume", "--no-progress"],
                   "were trained with another config than this one (optim.lr: saved 0.003, now 0.01)",
                   "put the saved values back")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing changed
    (run / "config.toml").write_text(saved.replace("every = 1\n", "every = 2\n"))  # log.every may change
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0


# ----------------------------------------------------------------------------------------------
# Ids outside the tokenizer
# ----------------------------------------------------------------------------------------------


def corrupt_every(path, every, value):
    """Overwrite every ``every``-th id of a token file (its size unchanged; its manifest entry not)."""
    import numpy as np

    ids = np.fromfile(path, dtype=np.uint16)
    ids[::every] = value
    ids.tofile(path)


@pytest.mark.parametrize("outside", ["padding", "past the embedding"])
def test_ids_outside_the_tokenizer_stop_training_and_eval_in_one_line(finished_run, data_dir, tmp_path, capsys,
                                                                      outside):
    import shutil

    from conftest import cli_args

    data = shutil.copytree(data_dir, tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    vocab = manifest["vocab_size"]
    value = vocab + 3 if outside == "padding" else 60000  # padding: the embedding has a row for it, nothing fails
    for split in ("train", "val"):
        corrupt_every(data / manifest["shards"][split][0]["file"], 50, value)
    fix = f"find it with `tstrain verify-data {data}`"
    one_line_error(capsys, cli_args(data, tmp_path / "run", **{"train.steps": 4, "model.vocab_size": vocab + 64}),
                   f"hold id {value}, outside the tokenizer's vocabulary of {vocab}", fix)
    one_line_error(capsys, ["eval", str(finished_run), "--data", str(data), "--windows", "4"], f"hold id {value}", fix)
    one_line_error(capsys, ["verify-data", str(data)], f"contains token id {value}")


def test_a_manifest_whose_vocabulary_is_not_its_tokenizers_is_refused(data_dir, tmp_path, capsys):
    import shutil

    data = shutil.copytree(data_dir, tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "vocab_size": manifest["vocab_size"] + 200}))
    one_line_error(capsys, ["verify-data", str(data)], f"records a vocabulary of {manifest['vocab_size'] + 200} but "
                   f"its tokenizer.json has {manifest['vocab_size']} tokens")


def test_a_summary_cut_short_is_written_again_when_the_run_is_reused(finished_run, tmp_path):
    import shutil

    from tstrain.config import load_config
    from tstrain.studies.runs import run_or_reuse

    run = shutil.copytree(finished_run, tmp_path / "run")
    whole = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps(whole)[:40])
    again = run_or_reuse(load_config(config_file=run / "config.toml"), run)
    assert again["final_val_loss"] == whole["final_val_loss"] and again["steps"] == whole["steps"]
    assert json.loads((run / "summary.json").read_text())["final_val_loss"] == whole["final_val_loss"]


def test_eval_of_a_run_repeats_its_val_loss_by_default(finished_run, data_dir, capsys):
    summary = json.loads((finished_run / "summary.json").read_text())
    for source in (finished_run, finished_run / "final"):
        assert main(["eval", str(source), "--data", str(data_dir)]) == 0
        out = capsys.readouterr().out
        assert f"next-token loss {summary['final_val_loss']:.4f} nats" in out, out
        assert "(16 validation windows of 32 positions" in out, out  # the tiny preset's val_windows and seq_len


# ----------------------------------------------------------------------------------------------
# Text in: separators, EOS text, one big file
# ----------------------------------------------------------------------------------------------


def test_doc_separator_escapes_typed_on_a_command_line_split_like_the_characters(data_dir, tmp_path, capsys):
    from conftest import make_corpus

    text = make_corpus(tmp_path / "c.txt", docs=300)
    base = ["prepare-data", "--input", str(text), "--tokenizer", str(data_dir / "tokenizer.json"), "--val-fraction",
            "0.05", "--no-progress"]
    assert main(base + ["--doc-separator", r"\n\n\n", "--out", str(tmp_path / "typed")]) == 0
    assert main(base + ["--doc-separator", "\n\n\n", "--out", str(tmp_path / "real")]) == 0
    typed, real = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("typed", "real"))
    assert typed["doc_separator"] == "\n\n\n" and typed["train_documents"] + typed["val_documents"] == 300
    assert typed["shards"] == real["shards"]  # the same bytes


def test_a_separator_that_never_matches_is_reported_and_one_big_text_holds_out_its_tail(data_dir, tmp_path, capsys):
    from conftest import make_corpus
    from tstrain.data.prepare import PrepareOptions, is_validation_doc, prepare_data
    from tstrain.data.tokens import TokenData

    text = make_corpus(tmp_path / "one big file.txt", docs=300)
    with pytest.warns(UserWarning, match=r"--doc-separator '@@@' occurs in none of the 1 text inputs"):
        m = prepare_data([text], tmp_path / "data", PrepareOptions(tokenizer=data_dir / "tokenizer.json",
                         doc_separator="@@@", val_fraction=0.05, progress=False))
    assert "1 document too few to hold any out whole: the validation split is the last" in capsys.readouterr().out
    assert is_validation_doc(0, 0.5, 0)  # a split that holds the one document out: it trains, less its tail
    whole = prepare_data([text], tmp_path / "whole", PrepareOptions(tokenizer=data_dir / "tokenizer.json",
                         val_fraction=0.5, progress=False, seed=0))
    data, ref = TokenData(tmp_path / "data"), TokenData(tmp_path / "whole")
    stream = list(data.train[:]) + list(data.val[:])
    assert stream == list(ref.train[:]) + list(ref.val[:])  # the stream, cut in two
    assert m["val_from_tail"] == len(data.val) == round(0.05 * len(stream)) and m["train_documents"] == 1
    assert whole["val_from_tail"] == round(0.5 * len(stream))
    data.verify()  # hashes and largest ids of the rewritten shards are the manifest's


def test_eos_text_inside_a_document_is_warned_about(data_dir, tmp_path):
    from tstrain.data.prepare import PrepareOptions, prepare_data

    text = tmp_path / "c.txt"
    text.write_text("the cat sat <|endoftext|> on the mat\n\n\n" * 40 + "the dog ran <|endoftext|>\n\n\n" * 40)
    with pytest.warns(UserWarning, match=r"holds the EOS token's text '<\|endoftext\|>' 80 times"):
        m = prepare_data([text], tmp_path / "data", PrepareOptions(tokenizer=data_dir / "tokenizer.json",
                         doc_separator="\n\n\n", val_fraction=0.2, progress=False))
    assert m["eos_in_text"] == 80


# ----------------------------------------------------------------------------------------------
# Rough edges: every value and every cut-short file ends in one line
# ----------------------------------------------------------------------------------------------


def refused(capsys, args, *fragments):
    """Like one_line_error, also for errors argparse finds (it exits instead of returning)."""
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_non_finite_and_out_of_range_values_are_one_line_errors(data_dir, tmp_path, capsys):
    data, tok, out = str(data_dir), str(data_dir / "tokenizer.json"), str(tmp_path / "never")
    text = str(tmp_path / "c.txt")
    (tmp_path / "c.txt").write_text("the cat sat on the mat\n\n\n" * 50)
    prep = ["prepare-data", "--input", text, "--tokenizer", tok, "--out", out, "--no-progress"]
    train = ["train", "--preset", "tiny", "--data", data, "--out", out, "--no-progress"]
    experiment = ["--preset", "tiny", "--data", data, "--out", out, "--no-progress"]
    cases = [
        (prep + ["--val-fraction", "nan"], "argument --val-fraction: not a finite number: 'nan'"),
        (prep + ["--max-bad-text", "inf"], "argument --max-bad-text: not a finite number: 'inf'"),
        (prep + ["--max-bad-text", "-1"], "--max-bad-text is a share of the characters, in [0, 1]; got -1.0"),
        (["prepare-data", "--input", text, "--train-tokenizer", "99999999999", "--out", out],
         "--train-tokenizer 99,999,999,999 is past the largest vocabulary"),
        (train + ["--lr", "nan"], "optim.lr must be a finite number; got nan"),
        (train + ["--ratio", "nan"], "tst.ratio must be a finite number; got nan"),
        (train + ["--set", "optim.eps=nan"], "optim.eps must be a finite number; got 'nan'"),
        (train + ["--set", "model.init_std=inf"], "model.init_std must be a finite number; got 'inf'"),
        (train + ["--set", "optim.weight_decay=-inf"], "optim.weight_decay must be a finite number"),
        (train + ["--seed", "-1"], "train.seed must be in [0, 2^32); got -1"),
        (train + ["--set", "train.eval_batch_size=0"], "train.eval_batch_size must be >= 1; got 0"),
        (["sweep", *experiment, "--ratios", "0.3,nan"], "--ratios nan: ratio must be a finite number; got nan"),
        (["sweep", *experiment, "--bag-sizes", "two"], "--bag-sizes takes comma-separated whole numbers; got 'two'"),
        (["scale", "--data", data, "--out", out, "--arms", "4:nan"], "--arms 4:nan: ratio must be a finite number"),
        (["scale", "--data", data, "--out", out, "--steps", "abc"], "--steps takes comma-separated whole numbers"),
        (["scale", "--data", data, "--out", out, "--repeat-within", "nan"], "argument --repeat-within: not a finite"),
        (["generate", str(tmp_path), "--prompt", "a", "--temperature", "inf"], "argument --temperature: not a finite"),
        (["generate", str(tmp_path), "--prompt", "a", "--seed", str(2**70)], "seed must be in [0, 2^63)"),
        (["eval", str(tmp_path), "--data", data, "--batch-size", "0"], "--batch-size >= 1"),
        (["lm-eval", str(tmp_path), "--tasks", "x", "--limit", "-1"], "--limit > 0; got 8, None, -1.0"),
        (["info", "--preset", "tiny", "--vocab-size", "-1"], "--vocab-size must be >= 1; got -1"),
        (["mi", "--data", data, "--out", out, "--max-distance", "0"], "--max-distance and --bag-size must be >= 1"),
        (["mi", "--data", data, "--out", out, "--sample-tokens", "-1"], "--sample-tokens above --max-distance + 1"),
        (["train"], "the following arguments are required: --out; see `tstrain train --help`"),
        (["train", "--out", out, "--bogus-flag"], "unrecognized arguments: --bogus-flag; see `tstrain"),
    ]
    for args, fragment in cases:
        refused(capsys, args, fragment)
    assert not (tmp_path / "never").exists()


def test_files_cut_short_are_one_line_errors(finished_run, data_dir, tmp_path, capsys):
    import gzip
    import random
    import shutil

    def cut(path, keep=0.5):
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])

    rng = random.Random(0)
    lines = "".join(json.dumps({"text": " ".join(rng.choice(["cat", "dog", "sat", "the"]) for _ in range(30))}) + "\n"
                    for _ in range(3000))
    packed = tmp_path / "c.jsonl.gz"
    packed.write_bytes(gzip.compress(lines.encode()))
    cut(packed)
    out = tmp_path / "never"
    refused(capsys, ["prepare-data", "--input", str(packed), "--tokenizer", str(data_dir / "tokenizer.json"),
                     "--out", str(out), "--no-progress"], f"{packed} ends early or is corrupt after line")
    assert not out.exists()  # a failed prepare-data leaves no dir it created
    (tmp_path / "blob.txt").write_bytes(b"\x00" * 100 + b"the cat")
    refused(capsys, ["prepare-data", "--input", str(tmp_path / "blob.txt"), "--tokenizer",
                     str(data_dir / "tokenizer.json"), "--out", str(out), "--no-progress"], "NUL bytes")
    assert not out.exists()
    for name, fragment in (("data.json", "data.json is not valid JSON"),
                           ("final/model.safetensors", "a file is cut short or corrupt"),
                           ("final/tokenizer.json", "final/tokenizer.json is not the tokenizer the run trained "
                                                    "with (its SHA-256 differs from")):
        run = shutil.copytree(finished_run, tmp_path / name.replace("/", "-"))
        if name == "final/tokenizer.json":
            (run / "tokenizer.json").unlink()  # a run from before runs kept their own
        cut(run / name)
        refused(capsys, ["generate", str(run), "--prompt", "the cat"], fragment)
    record = json.loads((run / "data.json").read_text())  # a record without the hash: the file itself is read
    (run / "data.json").write_text(json.dumps({k: v for k, v in record.items() if k != "tokenizer_sha256"}))
    (run / "final.json").unlink()  # nor a record of final/'s files, as a run from before either was kept
    refused(capsys, ["generate", str(run), "--prompt", "the cat"], "final/tokenizer.json is not a readable tokenizer")
    data = shutil.copytree(data_dir, tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"]["train"][0]["tokens"] = "many"
    (data / "manifest.json").write_text(json.dumps(manifest))
    refused(capsys, ["verify-data", str(data)], "manifest.json lacks or garbles a field")


def test_skipped_steps_leave_valid_json_and_are_counted_in_the_summary(tiny_cfg, tmp_path):
    import math

    from tstrain.train.loop import train

    count = {"n": 0}

    def poisoned(tst_loss, batch):
        count["n"] += 1
        loss = tst_loss(batch)
        return loss * math.nan if count["n"] in (2, 4) else loss

    train(tiny_cfg(**{"train.steps": 6, "tst.ratio": 0.5, "train.skip_nonfinite": True}), tmp_path / "run",
          loss_fn=poisoned)

    def no_nan(name):
        raise ValueError(f"bare {name} in metrics.jsonl")

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=no_nan) for line in lines]  # strict JSON: every line parses
    assert [r["loss"] is None for r in rows if "loss" in r] == [False, True, False, True, False, False]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_steps"] == 2


def test_sigterm_stops_a_run_with_the_command_that_continues_it(data_dir, tmp_path):
    from tstrain.train.checkpoint import list_checkpoints

    run = tmp_path / "run"
    args = [sys.executable, "-m", "tstrain", "train", "--preset", "tiny", "--data", str(data_dir), "--out", str(run),
            "--no-progress", "--set", "train.steps=100000", "--set", "train.checkpoint_every=20",
            "--set", "train.eval_every=0", "--set", "data.max_epochs=100000"]
    proc = subprocess.Popen(args, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: list_checkpoints(run / "checkpoints"), "a checkpoint")
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].strip()
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    err = err.splitlines()[-1]  # after the warning that so long a run rereads its data
    assert "tstrain train: stopped (SIGTERM). the newest checkpoint is step-" in err, err
    assert f"continue with `tstrain train --out {run} --resume`" in err, err


def test_a_closed_pipe_ends_batch_quietly(data_dir, tmp_path):
    shell = (f"{sys.executable} -m tstrain batch --preset tiny --data '{data_dir}' --step 0 --text "
             "--set train.batch_size=4096 | head -1; exit ${PIPESTATUS[0]}")
    done = subprocess.run(["bash", "-c", shell], env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("step 0") and done.stderr == "", done.stderr
    assert done.returncode == 141  # as a program killed by SIGPIPE: the reader closed the pipe


def test_under_torchrun_every_process_of_a_refused_job_stops(data_dir, tmp_path):
    from conftest import cli_args, launch

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=child_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = launch(cli_args(data_dir, run, **{"train.device": "cpu"}), processes=2, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0  # and it ended: no process waits in a collective for the one that stopped
    assert f"is in use by another tstrain process (pid {holder.pid}" in done.stderr, done.stderr
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing was written
