"""Shared fixtures: a small synthetic corpus, prepared once per test session."""

import random

import pytest
import torch

from tstrain.config import load_config
from tstrain.data.prepare import PrepareOptions, prepare_data

WORDS = (
    "the a cat dog bird sat ran flew on under over mat tree house red big small old blue "
    "saw liked found near with and then quickly slowly happy sad home garden river"
).split()


def make_corpus(path, docs=1500, seed=0):
    """Write ``docs`` short pseudo-sentences separated by blank lines; a learnable toy language."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(docs):
            sentences = []
            for _ in range(rng.randint(2, 6)):
                subject = f"the {rng.choice(WORDS[5:19])} {rng.choice(['cat', 'dog', 'bird'])}"
                sentences.append(f"{subject} {rng.choice(['sat', 'ran', 'flew', 'saw'])} "
                                 f"{rng.choice(['on', 'under', 'over', 'near'])} "
                                 f"the {rng.choice(['mat', 'tree', 'house', 'garden', 'river'])}.")
            f.write(" ".join(sentences) + "\n\n\n")
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    text = make_corpus(root / "corpus.txt")
    out = root / "data"
    prepare_data([text], out, PrepareOptions(train_tokenizer=320, doc_separator="\n\n\n", val_fraction=0.05,
                 progress=False))
    return out


@pytest.fixture
def tiny_cfg(data_dir):
    """The tiny preset on the session corpus, short and quiet; tests override what they vary."""
    def make(**overrides):
        base = {"data.path": str(data_dir), "log.progress": False, "train.steps": 24, "train.eval_every": 6,
                "log.every": 1}
        base.update(overrides)
        return load_config("tiny", overrides=base)
    return make


# The run the crash and multi-process tests reproduce: 24 tiny steps, switch at 12, a checkpoint
# every 5 steps (5, 10, 12, 15, 20, 24), two kept besides the switch one.
RUN_FLAGS = {"train.steps": 24, "tst.ratio": 0.5, "train.eval_every": 6, "log.every": 1, "train.checkpoint_every": 5,
             "train.keep_checkpoints": 2}


def cli_args(data_dir, out, resume=False, **extra):
    """Return the `tstrain train` arguments of the reference run (RUN_FLAGS, then ``extra``) into ``out``."""
    args = ["train", "--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--no-progress"]
    args += [f"--set={k}={v}" for k, v in {**RUN_FLAGS, **extra}.items()]
    return args + (["--resume"] if resume else [])


def launch(args, processes=1, fault=None, timeout=300):
    """Run tstrain in a subprocess (under torchrun for processes > 1); return the CompletedProcess."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TSTRAIN_FAULT", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    if fault:
        env["TSTRAIN_FAULT"] = fault
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "tstrain"]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "tstrain"]
    return subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def reference_run(data_dir, tmp_path_factory):
    """The uninterrupted single-process run of RUN_FLAGS, trained in this process."""
    from tstrain.train.loop import train

    out = tmp_path_factory.mktemp("reference") / "run"
    train(load_config("tiny", overrides={"data.path": str(data_dir), "log.progress": False, **RUN_FLAGS}), out)
    return out


class NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss whose every gradient is non-finite."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def one_line_error(capsys, args, *fragments):
    """Run the CLI, expect exit 2 and a single stderr line holding every fragment."""
    from tstrain.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err
