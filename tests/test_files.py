"""The files tstrain writes: never through a link, whole or not at all, a full disk in one line, and every
file read back checked for its shape."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import cli_args, launch, one_line_error
from tstrain import fileio
from tstrain.cli import main
from tstrain.data.tokens import TokenData
from tstrain.errors import CheckpointError, DataError, WriteError
from tstrain.fileio import atomic_dir, write_text_atomic
from tstrain.train.checkpoint import latest_good_checkpoint, list_checkpoints, verify_checkpoint
from tstrain.train.loop import train

SHORT = {"train.steps": 4, "tst.ratio": 0.5}


def short_run(data_dir, out, *more):
    return ["train", "--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--no-progress", "--steps", "4",
            "--set", "tst.ratio=0.5", "--set", "train.checkpoint_every=2", *more]


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished four-step run, copied by the tests that change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(short_run(data_dir, out)) == 0
    return out


def test_a_link_at_the_lock_is_refused_and_the_file_it_points_to_is_untouched(data_dir, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".tstrain.lock").symlink_to(victim)
    one_line_error(capsys, short_run(data_dir, run), ".tstrain.lock is a symbolic link", "remove the link")
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("opener", [lambda p: fileio.open_no_link(p, os.O_WRONLY | os.O_CREAT),
                                    lambda p: fileio.open_new(p).close()])
def test_a_link_planted_between_the_check_and_the_open_is_refused_by_name(tmp_path, monkeypatch, opener):
    target, path, checked = tmp_path / "elsewhere", tmp_path / "file", []
    target.write_text("keep")
    real = fileio.refuse_link

    def check_then_plant(p):  # the first check passes, then a link appears before the open
        real(p)
        if not checked:
            checked.append(p)
            p.symlink_to(target)
        return p

    monkeypatch.setattr(fileio, "refuse_link", check_then_plant)
    with pytest.raises(WriteError, match=f"{path} is a symbolic link"):
        opener(path)
    assert checked == [path] and target.read_text() == "keep"


def test_a_final_linked_to_another_runs_model_is_refused_before_training(finished, data_dir, tmp_path, capsys):
    other = shutil.copytree(finished, tmp_path / "other")
    before = (other / "final" / "model.safetensors").read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    (run / "final").symlink_to(other / "final")
    one_line_error(capsys, short_run(data_dir, run), "final is a symbolic link")
    assert (other / "final" / "model.safetensors").read_bytes() == before
    assert not (run / "metrics.jsonl").exists()  # refused before anything was written


def test_a_metrics_link_is_refused_on_resume_and_its_target_is_untouched(finished, data_dir, tmp_path, capsys):
    run = shutil.copytree(finished, tmp_path / "run")
    target = tmp_path / "elsewhere.jsonl"
    shutil.move(run / "metrics.jsonl", target)
    (run / "metrics.jsonl").symlink_to(target)
    before = target.read_text()
    one_line_error(capsys, short_run(data_dir, run, "--resume"), "metrics.jsonl is a symbolic link")
    assert target.read_text() == before


def test_an_atomic_write_leaves_the_old_file_and_dir_when_it_fails(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    (tmp_path / ".f.json.tmp").symlink_to(tmp_path / "victim")  # a link at the temporary name is removed, not followed
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and not (tmp_path / "victim").exists()
    model = tmp_path / "model"
    model.mkdir()
    (model / "a").write_text("old")
    with pytest.raises(WriteError, match=r"could not write .*model \(No space left on device; .* MiB free there"):
        with atomic_dir(model, "the model dir") as tmp:
            (tmp / "a").write_text("half")
            raise OSError(28, "No space left on device")
    assert (model / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "model"]


def test_a_full_disk_in_the_checkpoint_weights_keeps_the_earlier_checkpoint_and_resumes_exactly(
        data_dir, reference_run, tmp_path):
    run, root = tmp_path / "run", tmp_path / "run" / "checkpoints"
    done = launch(cli_args(data_dir, run), fault="full-save:10")
    err = done.stderr.strip()
    assert done.returncode == 2 and "\n" not in err and "Traceback" not in err, err
    assert "could not write the checkpoint of step 10" in err and "MiB needed" in err
    assert not list(root.glob(".tmp-*")) and [p.name for p in list_checkpoints(root)] == ["step-00000005"]
    verify_checkpoint(root / "step-00000005")
    done = launch(cli_args(data_dir, run, resume=True))
    assert done.returncode == 0, done.stderr[-2000:]
    assert ((run / "final" / "model.safetensors").read_bytes()
            == (reference_run / "final" / "model.safetensors").read_bytes())


def test_a_full_disk_while_writing_final_leaves_no_partial_model_and_resume_writes_it(data_dir, tmp_path):
    run = tmp_path / "run"
    done = launch(short_run(data_dir, run), fault="full-model:0")
    err = done.stderr.strip()
    assert done.returncode == 2 and "\n" not in err and f"could not write {run / 'final'}" in err, err
    assert "MiB needed); the model dir as it was is kept" in err
    assert not (run / "final").exists() and not (run / ".final.tmp").exists()
    done = launch(short_run(data_dir, run, "--resume"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "final" / "model.safetensors").is_file()


def test_a_full_disk_while_exporting_leaves_no_dir_that_blocks_the_next_export(finished, tmp_path):
    out = tmp_path / "exported"
    done = launch(["export", str(finished), "--out", str(out)], fault="full-model:0")
    assert done.returncode == 2 and f"could not write {out}" in done.stderr, done.stderr[-2000:]
    assert not out.exists() and not (tmp_path / ".exported.tmp").exists()
    assert launch(["export", str(finished), "--out", str(out)]).returncode == 0
    assert (out / "model.safetensors").is_file()


def test_a_real_full_disk_is_one_line_and_keeps_the_earlier_checkpoint(data_dir, finished, tmp_path):
    first = finished / "checkpoints" / "step-00000002"
    ckpt_bytes = sum(f.stat().st_size for f in first.iterdir())
    # the first checkpoint fits; the second fills the disk halfway through its weights (safetensors' error)
    size = ckpt_bytes + (first / "model.safetensors").stat().st_size // 2 + (64 << 10)
    run = tmp_path / "mnt" / "run"
    run.parent.mkdir()
    script = (f"mount -t tmpfs -o size={size} tmpfs {run.parent} || exit 99; "
              f"{sys.executable} -m tstrain {' '.join(short_run(data_dir, run, '--set', 'train.keep_checkpoints=2'))}"
              f"; echo rc=$?; ls -a {run / 'checkpoints'}; {sys.executable} -c 'import sys; "
              "from tstrain.train.checkpoint import verify_checkpoint as v; from pathlib import Path; "
              f"v(Path(\"{run / 'checkpoints' / 'step-00000002'}\")); print(\"step 2 verifies\")'")
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: no tmpfs can be mounted here")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    if done.returncode == 99 or "unshare:" in done.stderr:
        pytest.skip(f"mounting a tmpfs is not allowed here: {done.stderr.strip()[:200]}")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "rc=2" in done.stdout and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "could not write the checkpoint of step 4" in lines[0] and "MiB needed" in lines[0]
    assert "step-00000002" in done.stdout and ".tmp-" not in done.stdout and "step 2 verifies" in done.stdout


def test_a_checkpoint_manifest_without_its_files_or_as_a_list_is_named_and_skipped(finished, tmp_path):
    run = shutil.copytree(finished, tmp_path / "run")
    newest = list_checkpoints(run / "checkpoints")[-1]
    for broken, field in (({"step": 4}, "has no 'files' object"), ([1, 2], "holds a JSON list, not an object"),
                          ({"files": {"rng.pt": {"bytes": "9"}}}, "files.rng.pt is not")):
        (newest / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=field):
            verify_checkpoint(newest)
        with pytest.warns(UserWarning, match=field):
            assert latest_good_checkpoint(run / "checkpoints")[0] != newest


def test_a_data_manifest_with_an_absurd_vocabulary_is_refused_before_anything_is_written(
        data_dir, tmp_path, capsys):
    data = shutil.copytree(data_dir, tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "vocab_size": 10**12}))
    with pytest.raises(DataError, match=r"vocab_size 1000000000000 is outside 2\.\.65536"):
        TokenData(data)
    one_line_error(capsys, short_run(data, tmp_path / "run"), "vocab_size 1000000000000")
    assert not (tmp_path / "run").exists()


def test_a_garbled_middle_metrics_line_is_refused_on_resume_by_file_and_line(finished, data_dir, tmp_path, capsys):
    run = shutil.copytree(finished, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2] + ['{"step": 2, "lo\n'] + lines[2:]))
    one_line_error(capsys, short_run(data_dir, run, "--resume"), "metrics.jsonl:3 is not valid JSON")


def test_a_bit_flip_in_final_is_refused_by_export_eval_and_generate(finished, tmp_path, capsys):
    run = shutil.copytree(finished, tmp_path / "run")
    weights = run / "final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    for args in (["export", str(run), "--out", str(tmp_path / "x")],
                 ["generate", str(run / "final"), "--prompt", "the"]):
        one_line_error(capsys, args, "model.safetensors does not match its SHA-256", "final.json", "--resume")
    assert not (tmp_path / "x").exists()
    shutil.rmtree(run / "final")
    shutil.copytree(finished / "final", tmp_path / "elsewhere")  # a model dir with no run's record: read as it is
    assert main(["generate", str(tmp_path / "elsewhere"), "--prompt", "the", "--max-new-tokens", "2"]) == 0


def test_train_refuses_nothing_new_for_an_ordinary_run(tiny_cfg, tmp_path):
    summary = train(tiny_cfg(**SHORT), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "final.json").read_text())
    assert summary.final_val_loss > 0 and "model.safetensors" in record["files"]


def test_resume_names_a_changed_final_and_writes_it_again(finished, data_dir, tmp_path, capsys):
    from tstrain.train.model_dir import final_problem

    run = shutil.copytree(finished, tmp_path / "run")
    (run / "final" / "config.json").write_text((run / "final" / "config.json").read_text() + " ")
    assert main(short_run(data_dir, run, "--resume")) == 0
    assert "config.json has" in capsys.readouterr().out and final_problem(run) is None


def test_malformed_run_records_are_one_line_naming_the_file_and_the_field(finished, data_dir, tmp_path, capsys):
    from tstrain.errors import RecordError
    from tstrain.model_io import run_settings
    from tstrain.studies.runs import run_or_reuse

    run = shutil.copytree(finished, tmp_path / "run")
    saved = (run / "config.toml").read_text()
    (run / "config.toml").write_text('[train]\nsteps = "x"\n')
    one_line_error(capsys, ["train", "--out", str(run), "--resume", "--no-progress"],
                   "config.toml: train.steps must be an integer")
    (run / "config.toml").write_text(saved)
    (run / "data.json").write_text("[1]")
    one_line_error(capsys, ["export", str(run), "--out", str(tmp_path / "x")], "data.json holds a JSON list")
    shutil.copy(finished / "data.json", run / "data.json")
    (run / "summary.json").write_text('{"final_val_loss": "low"}')
    with pytest.raises(RecordError, match=r"summary.json: final_val_loss is 'low', not a number"):
        run_or_reuse(run_settings(run), run)


def test_a_text_input_read_in_small_chunks_gives_the_documents_and_counts_of_reading_it_whole(tmp_path, monkeypatch):
    import random

    from tstrain.data import text_sources
    from tstrain.data.text_sources import TextStats, iter_documents

    rng = random.Random(3)
    pieces = [b"the cat\r\n", b"\r", b"\n", b"sat\xff on", "\ufffd".encode(), "é".encode(), b"\n\n\n", b"x",
              b"\r\n\r\n\r\n"]
    raw = b"".join(rng.choice(pieces) for _ in range(3000))
    (tmp_path / "t.txt").write_bytes(raw)
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    want = [t for t in text.split("\n\n\n") if t.strip()]
    for chunk in (1, 2, 7, 1 << 24):
        monkeypatch.setattr(text_sources, "CHUNK_BYTES", chunk)
        stats = TextStats()
        assert list(iter_documents([tmp_path / "t.txt"], "\n\n\n", stats)) == want
        assert (stats.chars, stats.replaced, stats.separated_files) == (len(raw.decode("utf-8", errors="replace")),
                                                                        raw.count(b"\xff"), 1)
    monkeypatch.setattr(text_sources, "MAX_DOCUMENT_CHARS", 100)
    with pytest.raises(DataError, match=r"t.txt holds a document of more than 100 characters \(the whole file"):
        list(iter_documents([tmp_path / "t.txt"], None, TextStats()))


def test_generate_stays_within_the_models_context_and_refuses_bad_devices_and_prompts(finished, capsys):
    import os

    assert main(["generate", str(finished), "--prompt", "the", "--max-new-tokens", "1000000000", "--greedy"]) == 0
    captured = capsys.readouterr()
    assert "generating 31 tokens, not 1000000000: the model's context is 32" in captured.err
    one_line_error(capsys, ["generate", str(finished), "--prompt", "the cat " * 40], "no room to continue it")
    one_line_error(capsys, ["generate", str(finished), "--prompt", "the", "--device", "bogus"],
                   "--device 'bogus' is not a device")
    one_line_error(capsys, ["generate", str(finished), "--prompt", os.fsdecode(b"\xff\xfe")],
                   "the prompt is not valid UTF-8")


def test_a_cuda_device_on_a_machine_without_one_is_one_line(finished, data_dir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    for verb in (["generate", str(finished), "--prompt", "the"], ["eval", str(finished), "--data", str(data_dir)]):
        one_line_error(capsys, [*verb, "--device", "cuda"], "sees no CUDA device", "use --device cpu")


def test_experiment_and_corpus_options_are_refused_before_the_first_run_or_download(data_dir, tmp_path, capsys):
    one_line_error(capsys, ["scale", "--data", str(data_dir), "--out", str(tmp_path / "s"), "--sizes", "tiny",
                            "--steps", "20", "--arms", "4:0.01", "--lrs", "1e-3", "--tune-steps", "10"],
                   "tst.ratio=0.01 of", "rounds to no phase-1 step")
    one_line_error(capsys, ["fetch-corpus", "--out", str(tmp_path / "c"), "--sources", "sotu,", "--no-progress"],
                   "unknown corpus source '' in --sources")
    one_line_error(capsys, ["sweep", "--preset", "tiny", "--data", str(data_dir), "--out", str(tmp_path / "w"),
                            "--steps", "20", "--bag-sizes", "2", "--ratios", "0.3,0.01", "--no-progress"],
                   "tst.ratio=0.01 of 20 steps rounds to no phase-1 step")
    assert not any((tmp_path / name).exists() for name in ("s", "c", "w"))


def test_tstrain_version_names_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"tstrain {version('tstrain')}"


def test_a_full_disk_while_copying_the_tokenizer_names_the_runs_copy_and_leaves_no_temporary_file(
        tiny_cfg, tmp_path, monkeypatch):
    from tstrain.train import run_dir

    def full(src, dst, *a):
        dst.write(src.read(10))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_dir.shutil, "copyfileobj", full)
    run = tmp_path / "run"
    with pytest.raises(WriteError, match=rf"could not write {run / 'tokenizer.json'} \(No space left on device; "):
        train(tiny_cfg(**SHORT), run)
    assert not (run / ".tokenizer.json.tmp").exists() and not (run / "tokenizer.json").exists()


def test_a_full_disk_while_writing_a_shard_names_it_and_keeps_the_finished_parts(data_dir, tmp_path, monkeypatch):
    from conftest import make_corpus
    from tstrain.data import shards
    from tstrain.data.prepare import PrepareOptions, prepare_data

    class Full:  # the file of the second train shard: the disk is full
        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    real = shards.open_new
    monkeypatch.setattr(shards, "open_new",
                        lambda path, mode: Full() if "train-00001" in path.name else real(path, mode))
    text, out = make_corpus(tmp_path / "c.txt", docs=400), tmp_path / "data"
    options = PrepareOptions(tokenizer=str(data_dir / "tokenizer.json"), doc_separator="\n\n\n", shard_tokens=2000,
                             progress=False)
    with pytest.raises(WriteError, match=r"could not write .*data/train-00001.bin \(No space left on device; "
                                         r".* MiB needed\); the parts finished before are kept"):
        prepare_data([text], out, options)
    assert not list(out.glob("*.tmp")) and (out / "train-00000.bin").is_file()
    monkeypatch.setattr(shards, "open_new", real)
    assert prepare_data([text], out, options)["train_tokens"] > 0  # run again: it continues after the kept part


def test_leftovers_of_a_killed_final_write_are_removed_by_the_next_one(finished, data_dir, tmp_path):
    run = shutil.copytree(finished, tmp_path / "run")
    (run / ".final.tmp").mkdir()
    (run / ".final.tmp" / "config.json").write_text("{}")
    (run / ".summary.json.tmp").write_text("half")
    assert main(short_run(data_dir, run, "--resume")) == 0
    assert not (run / ".final.tmp").exists() and not (run / ".summary.json.tmp").exists()
    assert ((run / "final" / "model.safetensors").read_bytes()
            == (finished / "final" / "model.safetensors").read_bytes())


def test_a_diverging_comparison_baseline_names_the_flag_that_set_its_learning_rate(data_dir, tmp_path, capsys):
    one_line_error(capsys, ["compare", "--preset", "tiny", "--data", str(data_dir), "--out", str(tmp_path / "c"),
                            "--steps", "8", "--baseline-lr", "1e9", "--no-progress"],
                   "non-finite", "Lower this run's learning rate (1e+09: --lr, or --baseline-lr")


def test_a_prepare_progress_file_that_is_not_its_shape_is_one_line(data_dir, tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    args = ["prepare-data", "--input", str(data_dir / "manifest.json"), "--tokenizer", str(data_dir / "tokenizer.json"),
            "--out", str(out), "--no-progress"]
    for broken, fragment in (("[1]", "prepare-state.json holds a JSON list"), ('{"parts": 3}', "parts or settings")):
        (out / "prepare-state.json").write_text(broken)
        one_line_error(capsys, args, fragment, "--overwrite")


def test_a_link_in_a_data_dir_is_refused_and_its_target_is_untouched(data_dir, tmp_path, capsys):
    victim, out = tmp_path / "victim", tmp_path / "data"
    victim.write_text("keep me\n")
    out.mkdir()
    (out / "tokenizer.json").symlink_to(victim)
    one_line_error(capsys, ["prepare-data", "--input", str(data_dir / "manifest.json"), "--tokenizer",
                            str(data_dir / "tokenizer.json"), "--out", str(out), "--no-progress"],
                   "tokenizer.json is a symbolic link")
    assert victim.read_text() == "keep me\n"
