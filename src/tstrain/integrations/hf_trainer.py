"""TST inside the Hugging Face ``Trainer``: phase 1, the switch and phase 2 with one optimizer and one
LR schedule, under accelerate, torchrun, gradient accumulation and ``resume_from_checkpoint``.

``TSTTrainer`` is a ``transformers.Trainer`` whose data are the public ``BatchMaker``'s windows and
whose loss is ``TSTLoss``; everything else (logging, checkpoints, DDP, mixed precision) is the
Trainer's own. The dataloader yields only ``(step, micro-batch)`` indices, so a resumed run skips
the steps it has done without reading them, and each process cuts its own slice of each step's
global batch (the Trainer does not shard it). The model's ``forward`` gains one keyword,
``tst_batch``, so that the loss runs inside whatever wrapper (DDP, FSDP) the Trainer puts around
the model; without it the model behaves as before, and its state dict and ``save_pretrained``
are untouched.

The optimizer is ``tstrain.adamw`` (decay on matrices only) and the LR ``Schedule.lr``: warmup
``args.warmup_steps`` (read as the Trainer reads it: below 1, a fraction of the steps), linear
decay over the last ``decay_fraction`` of the steps to ``final_lr_fraction`` of the peak
(``args.lr_scheduler_kwargs``, defaults 0.1 and 0), as in ``tstrain train``; each ``train()``
call starts a fresh LR schedule. Evaluation (``eval_dataset``) is the model's own next-token loss
on those batches. Each checkpoint records the schedule and the data seed (``tst_schedule.json``),
and a resume under other ones is refused. The switch's options (``reset_optimizer``,
``reinit_embeddings``) are not applied here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types

import torch

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ModuleNotFoundError as missing:
    raise ModuleNotFoundError("tstrain.integrations.hf_trainer needs transformers and accelerate: "
                              "pip install 'tstrain[trainer]'", name=missing.name) from None

from ..batches import Batch, BatchMaker
from ..loss import TSTLoss
from ..optim import adamw
from ..schedule import Schedule


class StepIndices(torch.utils.data.IterableDataset):
    """``{"tst_step": t, "tst_micro": k}`` for each micro-batch ``k`` of each step ``t``, in training order."""

    def __init__(self, steps: int, grad_accum: int):
        self.steps, self.grad_accum = steps, grad_accum

    def __iter__(self):
        for step in range(self.steps):
            for k in range(self.grad_accum):
                yield {"tst_step": step, "tst_micro": k}


def _forward_with_tst(model: torch.nn.Module, tst_loss: TSTLoss) -> None:
    """Give ``model.forward`` the ``tst_batch`` keyword: with it, return the TST loss of that batch."""
    plain = model.forward

    @functools.wraps(type(model).forward)  # its signature: the Trainer keeps the eval set's columns it names
    def forward(self, *args, tst_batch: Batch | None = None, **kwargs):
        return plain(*args, **kwargs) if tst_batch is None else tst_loss(tst_batch)

    model.forward = types.MethodType(forward, model)


class _StepLosses(TrainerCallback):
    """Records each optimizer step's training loss: the mean over its micro-batches and processes."""

    def __init__(self, trainer: TSTTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        mean = torch.stack(t._micro_losses).mean()
        t.step_losses.append(float(t.accelerator.reduce(mean, "mean")))
        t._micro_losses.clear()


class TSTTrainer(Trainer):
    """A ``Trainer`` that trains ``model`` (a Hugging Face causal LM) with TST on ``tokens``.

    ``schedule`` says what each step trains on; its ``steps`` and ``batch_size`` (sequences per
    optimizer step, over all processes and micro-batches) set ``args.max_steps`` and must divide
    by ``args.gradient_accumulation_steps`` times the processes. ``seed`` keys the data order.
    ``loss_options`` go to ``TSTLoss`` (``fused``, ``chunk_size``, ...; ``weights`` and
    ``mi_exponent`` are the schedule's unless given there). ``step_losses`` holds each
    step's training loss.
    """

    SCHEDULE_FILE = "tst_schedule.json"

    def __init__(self, model, args, *, tokens, schedule: Schedule, seed: int = 0, **kwargs):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a tstrain.Schedule; got {type(schedule).__name__}")
        loss_options = {"weights": schedule.weights, "mi_exponent": schedule.mi_exponent,
                        **kwargs.pop("loss_options", {})}
        if args.max_steps not in (-1, schedule.steps):
            raise ValueError(f"args.max_steps={args.max_steps} but the schedule has {schedule.steps} steps; "
                             "leave max_steps at -1 or give the same number")
        args.max_steps = schedule.steps
        self.schedule, self.seed = schedule, seed
        self.tst_loss = TSTLoss(model, **loss_options)
        self.tst_batches = BatchMaker(tokens, schedule, seed, vocab_size=self.tst_loss.parts.vocab_size)
        _forward_with_tst(model, self.tst_loss)
        self.step_losses: list[float] = []
        self._micro_losses: list[torch.Tensor] = []
        indices = StepIndices(schedule.steps, args.gradient_accumulation_steps)
        super().__init__(model=model, args=args, train_dataset=indices, **kwargs)
        self.add_callback(_StepLosses(self))

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """Return the step indices as they are: each process cuts its own slice in ``compute_loss``."""
        return torch.utils.data.DataLoader(self.train_dataset, batch_size=None)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            a = self.args
            self.optimizer = adamw(model or self.model, a.learning_rate, weight_decay=a.weight_decay,
                                   betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            extra = self.args.lr_scheduler_kwargs or {}
            decay, final = extra.get("decay_fraction", 0.1), extra.get("final_lr_fraction", 0.0)
            warmup = self.args.get_warmup_steps(num_training_steps)
            factor = lambda step: self.schedule.lr(step, 1.0, warmup, decay, final)  # noqa: E731
            # LambdaLR asks for step 0's factor at once: Schedule.lr refuses settings that would give a negative LR
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
            self._created_lr_scheduler = True  # the Trainer makes a fresh one for the next train()
        return self.lr_scheduler

    def schedule_record(self) -> dict:
        """Return what a checkpoint records of the run's TST: the schedule's settings and the data seed."""
        return {"schedule": dataclasses.asdict(self.schedule), "seed": self.seed}

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            with open(os.path.join(self._get_output_dir(trial=trial), folder, self.SCHEDULE_FILE), "w") as f:
                json.dump(self.schedule_record(), f)

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Train (``transformers.Trainer.train``), refusing to resume a checkpoint of another TST schedule."""
        if resume_from_checkpoint:
            folder = resume_from_checkpoint
            if folder is True:
                folder = get_last_checkpoint(self.args.output_dir)
            if folder:
                self.refuse_other_schedule(folder)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def refuse_other_schedule(self, folder: str) -> None:
        """Raise a ValueError unless checkpoint ``folder`` was written under this schedule and seed."""
        path = os.path.join(folder, self.SCHEDULE_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{folder} records no TST schedule ({self.SCHEDULE_FILE}): it was not written by "
                             "TSTTrainer, so resuming it could re-enter phase 1; start a new run instead")
        with open(path) as f:
            saved = json.load(f)
        now = self.schedule_record()
        diffs = [f"{key}: saved {saved['schedule'].get(key)!r}, now {value!r}"
                 for key, value in now["schedule"].items() if saved["schedule"].get(key) != value]
        diffs += [f"seed: saved {saved.get('seed')!r}, now {self.seed!r}"] if saved.get("seed") != self.seed else []
        if diffs:
            raise ValueError(f"{folder} was trained under another TST schedule ({'; '.join(diffs)}); resume it "
                             "with the schedule it recorded, or start a new run")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "tst_step" not in inputs:  # evaluation: the model's own next-token loss on the eval set's batches
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        step, k = int(inputs["tst_step"]), int(inputs["tst_micro"])
        if step != self.state.global_step:
            raise RuntimeError(f"the dataloader is at step {step} but the Trainer at {self.state.global_step}")
        a = self.args
        batch = self.tst_batches.micro_batch(step, k, a.gradient_accumulation_steps, a.process_index, a.world_size)
        loss = model(tst_batch=batch.to(a.device))
        self._micro_losses.append(loss.detach())
        return (loss, None) if return_outputs else loss
