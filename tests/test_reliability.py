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

from tstrain.cli import main
from tstrain.run_lock import LOCK_NAME


def one_line_error(capsys, args, *fragments):
    """Run the CLI, expect exit 2 and a single stderr line holding every fragment."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


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
    from tstrain.train import train
    cfg = load_config("tiny", overrides={"data.path": sys.argv[1], "log.progress": False, "train.steps": 40,
                                         "tst.ratio": 0.5, "train.checkpoint_every": 4, "train.eval_every": 0})
    train(cfg, sys.argv[2], on_step=lambda done: time.sleep(0.3))  # slow enough to be caught running
""")


def test_a_second_train_on_a_running_run_dir_is_refused_and_a_killed_one_resumes(data_dir, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, str(data_dir), str(run)], env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir()), "a checkpoint")
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name == "config.toml"}
        args = [sys.executable, "-m", "tstrain", "train", "--preset", "tiny", "--data", str(data_dir),
                "--out", str(run), "--no-progress", "--lr", "1e-3", "--set", "train.steps=40"]
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
    assert json.loads((run / "summary.json").read_text())["steps"] == 40


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
        one_line_error(capsys, [verb, *args.get(verb, train_like)], f"{out} is in use by another tstrain process "
                       f"(pid {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing was written
    finally:
        holder.kill()
        holder.wait()


def test_a_refused_run_leaves_no_dir_it_created_and_a_lock_is_released_after_the_job(tiny_cfg, tmp_path):
    from tstrain.errors import DataError
    from tstrain.run_lock import locked
    from tstrain.train import train

    with pytest.raises(DataError, match="does not exist"):
        train(tiny_cfg(**{"data.path": str(tmp_path / "no-data")}), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    train(tiny_cfg(**{"train.steps": 4}), tmp_path / "run")
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # a job that ends removes its lock file
    with locked(tmp_path / "run"):  # the job is over: its lock went with it
        pass
    assert (tmp_path / "run" / "summary.json").is_file()
