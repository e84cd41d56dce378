"""The public surface (``import tstrain``) as a whole: loops built from it repeating ``tstrain train``'s
numbers, and what it needs installed (each piece's own tests: test_schedule, test_batches, test_loss)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tstrain
from tstrain.config import load_config
from tstrain.data.tokens import TokenData
from tstrain.models import build_model
from tstrain.train.loop import train
from tstrain.train.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = "transformers,tokenizers,pyarrow,matplotlib,tensorboard,safetensors,tomli_w"


def run_blocked(blocked: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``args`` (a script, or ``-m module``) with the ``blocked`` packages impossible to import."""
    return subprocess.run([sys.executable, str(ROOT / "tests" / "run_blocked.py"), blocked, *args],
                          capture_output=True, text=True, timeout=600)


def train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


# ----------------------------------------------------------------------------------------------
# Loops built from the surface repeat tstrain train's numbers
# ----------------------------------------------------------------------------------------------

REFERENCE = {"train.steps": 24, "tst.ratio": 0.5, "train.eval_every": 0, "log.every": 1}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
    """``tstrain train`` on the tiny preset through the switch (24 steps, switch at 12): per-step losses."""
    run = tmp_path_factory.mktemp("reference") / "run"
    cfg = load_config("tiny", overrides={"data.path": str(data_dir), "log.progress": False, **REFERENCE})
    train(cfg, run)
    return cfg.resolved_for(TokenData(data_dir).vocab_size), train_losses(run)


def test_the_public_api_by_hand_repeats_tstrain_train(reference_run, data_dir):
    cfg, expected = reference_run
    o = cfg.optim
    torch.set_flush_denormal(True)  # as the trainer does on CPU
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len)
    schedule = tstrain.Schedule(steps=24, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len, bag_size=4,
                                ratio=0.5)
    batches = tstrain.BatchMaker(TokenData(data_dir).train, schedule, seed=cfg.train.seed)
    loss_fn, opt = tstrain.TSTLoss(model), tstrain.adamw(model, o.lr, weight_decay=o.weight_decay)
    losses = []
    for step in range(schedule.steps):
        for group in opt.param_groups:
            group["lr"] = schedule.lr(step, o.lr, o.warmup_steps, o.decay_fraction)
        loss = loss_fn(batches.batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses == pytest.approx(expected, rel=1e-4)


def test_the_hf_trainer_example_repeats_tstrain_train(reference_run, data_dir):
    _, expected = reference_run
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--preset", "tiny", "--data",
                           str(data_dir), "--steps", "24", "--ratio", "0.5"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])["losses"]
    assert losses == pytest.approx(expected, rel=1e-4)


def test_the_own_loop_example_trains_with_the_extras_impossible_to_import(data_dir):
    done = run_blocked(EXTRAS, str(ROOT / "examples" / "own_loop.py"), "--data", str(data_dir), "--steps", "12")
    assert done.returncode == 0, done.stderr[-2000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])["losses"]
    assert len(losses) == 12 and all(np.isfinite(losses)) and losses[-1] < losses[0] - 1.0
    assert "step 4 phase 1" in done.stdout and "step 5 phase 2" in done.stdout  # the switch at round(0.3 * 12)


def test_import_tstrain_needs_only_torch_and_numpy():
    code = "import tstrain; print(' '.join(name for name in tstrain.__all__ if hasattr(tstrain, name)))"
    done = run_blocked(EXTRAS, "-c", code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == tstrain.__all__


@pytest.mark.parametrize("args", [["--help"], ["scale", "--help"], ["ablate", "--help"], ["train", "--help"]])
def test_the_command_lines_help_loads_no_torch(args):
    done = run_blocked("torch", "-m", "tstrain", *args)
    assert done.returncode == 0 and done.stdout.startswith("usage: tstrain"), done.stderr[-2000:]


def test_a_verb_missing_its_extra_names_it_in_one_line(data_dir, tmp_path):
    done = run_blocked("transformers", "-m", "tstrain", "train", "--preset", "tiny", "--data", str(data_dir),
                       "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("tstrain train: error: needs the transformers package, which "
                                                    "the [hf] extra installs: pip install 'tstrain[hf]'")


def test_the_hf_trainer_under_torchrun_with_accumulation_repeats_tstrain_train(reference_run, data_dir):
    _, expected = reference_run
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / "examples" / "hf_trainer.py"), "--preset", "tiny", "--data", str(data_dir),
                           "--steps", "24", "--ratio", "0.5", "--grad-accum", "2"], capture_output=True, text=True,
                          timeout=600)  # --standalone: a free port, not torchrun's fixed default (29500)
    causes = [line for line in done.stderr.splitlines() if "rror" in line or "terminate" in line][:12]
    assert done.returncode == 0, "\n".join(causes) + "\n...\n" + done.stderr[-2000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])["losses"]  # rank 0: the mean over both processes
    assert losses == pytest.approx(expected, rel=1e-4)


def hf_trainer(data_dir, out, cfg):
    """A ``TSTTrainer`` on the tiny preset's model, checkpointing every 5 steps into ``out``."""
    from transformers import TrainingArguments

    from tstrain.integrations.hf_trainer import TSTTrainer

    o = cfg.optim
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len)
    args = TrainingArguments(output_dir=str(out), learning_rate=o.lr, weight_decay=o.weight_decay, adam_beta1=o.beta1,
                             adam_beta2=o.beta2, warmup_steps=o.warmup_steps, gradient_accumulation_steps=2,
                             save_strategy="steps", save_steps=5, report_to=[], disable_tqdm=True, use_cpu=True,
                             lr_scheduler_kwargs={"decay_fraction": o.decay_fraction})
    schedule = tstrain.Schedule(steps=24, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len, bag_size=4,
                                ratio=0.5)
    return TSTTrainer(model, args, tokens=TokenData(data_dir).train, schedule=schedule, seed=cfg.train.seed)


def test_the_hf_trainer_resumes_from_a_checkpoint_before_the_switch_exactly(reference_run, data_dir, tmp_path):
    cfg, expected = reference_run
    whole = hf_trainer(data_dir, tmp_path / "whole", cfg)
    whole.train()
    assert whole.step_losses == pytest.approx(expected, rel=1e-4)
    resumed = hf_trainer(data_dir, tmp_path / "whole", cfg)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-10"))  # the switch is at step 12
    assert resumed.step_losses == pytest.approx(whole.step_losses[10:], rel=1e-6)


def test_the_command_line_helps_without_extras_and_an_experiment_checks_its_extras_before_training(data_dir,
                                                                                                 tmp_path):
    done = run_blocked(f"{EXTRAS},tqdm", "-m", "tstrain", "--help")
    assert done.returncode == 0 and "prepare-data" in done.stdout
    done = run_blocked("matplotlib", "-m", "tstrain", "compare", "--preset", "tiny", "--data", str(data_dir),
                       "--out", str(tmp_path / "cmp"), "--steps", "4", "--no-progress")
    assert done.returncode == 2 and "[plots] extra" in done.stderr
    assert not (tmp_path / "cmp").exists()  # refused before any training


@pytest.mark.parametrize("code, extra", [
    ("from tstrain.models import build_model; from tstrain.config import ModelConfig; "
     "build_model(ModelConfig(), 64, 8)",
     "pip install 'tstrain[hf]'"),
    ("import tstrain.integrations.hf_trainer", "pip install 'tstrain[trainer]'"),
])
def test_a_module_that_needs_an_extra_names_it_when_it_is_missing(code, extra):
    done = run_blocked("transformers", "-c", code)
    assert done.returncode == 1 and extra in done.stderr.strip().splitlines()[-1]


def test_lm_eval_without_its_extra_names_the_eval_extra(tmp_path):
    done = run_blocked("transformers,lm_eval", "-m", "tstrain", "lm-eval", str(tmp_path), "--tasks", "hellaswag")
    assert done.returncode == 2 and "tstrain[eval]" in done.stderr
