"""The Hugging Face ``TSTTrainer``'s guards: the warmup as the Trainer reads it, a fresh LR schedule
for each ``train()``, evaluation on an eval set, and no resume under another TST schedule."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="TSTTrainer needs transformers (pip install 'tstrain[hf]')")

import tstrain  # noqa: E402
from tstrain.config import load_config  # noqa: E402
from tstrain.data.tokens import TokenData  # noqa: E402
from tstrain.integrations.hf_trainer import TSTTrainer  # noqa: E402
from tstrain.models import build_model  # noqa: E402

STEPS = 8


def make_trainer(data_dir, out, ratio=0.5, eval_dataset=None, **args):
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg.model, 384, cfg.train.seq_len)
    options = {"output_dir": str(out), "learning_rate": 1e-3, "warmup_steps": 2, "report_to": [], "use_cpu": True,
               "disable_tqdm": True, "logging_steps": 1, "save_strategy": "steps", "save_steps": 4, **args}
    schedule = tstrain.Schedule(steps=STEPS, batch_size=4, seq_len=cfg.train.seq_len, bag_size=2, ratio=ratio)
    return TSTTrainer(model, transformers.TrainingArguments(**options), tokens=TokenData(data_dir).train,
                      schedule=schedule, seed=0, eval_dataset=eval_dataset)


def logged_lrs(trainer) -> list[float]:
    return [row["learning_rate"] for row in trainer.state.log_history if "learning_rate" in row]


def test_a_warmup_below_one_is_a_fraction_of_the_steps_as_the_trainer_reads_it(data_dir, tmp_path):
    trainer = make_trainer(data_dir, tmp_path / "run", warmup_steps=0.25)  # ceil(0.25 * 8) = 2 steps
    trainer.create_optimizer_and_scheduler(STEPS)
    factor = trainer.lr_scheduler.lr_lambdas[0]
    assert [factor(t) for t in (0, 1, 2)] == [0.5, 1.0, 1.0]


def test_training_twice_starts_a_fresh_lr_schedule_and_never_trains_at_a_negative_lr(data_dir, tmp_path):
    trainer = make_trainer(data_dir, tmp_path / "run")
    trainer.train()
    first = logged_lrs(trainer)
    trainer.train()
    second = logged_lrs(trainer)[len(first):] if len(logged_lrs(trainer)) > len(first) else logged_lrs(trainer)
    assert len(trainer.step_losses) == 2 * STEPS and all(math.isfinite(x) for x in trainer.step_losses)
    assert min(first + second) >= 0.0 and second[0] == first[0] == pytest.approx(1e-3 / 2)


def test_evaluation_during_training_is_the_models_next_token_loss_on_the_eval_set(data_dir, tmp_path):
    tokens = torch.as_tensor(TokenData(data_dir).val[0:4 * 33].astype("int64")).view(4, 33)
    eval_set = [{"input_ids": row, "labels": row} for row in tokens]
    trainer = make_trainer(data_dir, tmp_path / "eval", eval_strategy="steps", eval_steps=4, eval_dataset=eval_set)
    trainer.train()
    losses = [row["eval_loss"] for row in trainer.state.log_history if "eval_loss" in row]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    with torch.no_grad():
        trainer.model.eval()
        direct = trainer.model(input_ids=tokens, labels=tokens).loss.item()
    assert losses[-1] == pytest.approx(direct, rel=1e-5)


def test_a_checkpoint_records_its_schedule_and_refuses_a_resume_under_another(data_dir, tmp_path):
    trainer = make_trainer(data_dir, tmp_path / "run")
    trainer.train()
    assert (tmp_path / "run" / "checkpoint-4" / TSTTrainer.SCHEDULE_FILE).is_file()
    other = make_trainer(data_dir, tmp_path / "run", ratio=0.25)
    with pytest.raises(ValueError, match=r"another TST schedule \(ratio: saved 0.5, now 0.25\)"):
        other.train(resume_from_checkpoint=True)
    same = make_trainer(data_dir, tmp_path / "run")
    same.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    assert same.step_losses == pytest.approx(trainer.step_losses[4:], rel=1e-6)
