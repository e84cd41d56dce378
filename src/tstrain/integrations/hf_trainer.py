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
``args.warmup_steps``, linear decay over the last ``decay_fraction`` of the steps to
``final_lr_fraction`` of the peak (``args.lr_scheduler_kwargs``, defaults 0.1 and 0), as in
``tstrain train``. The switch's options (``reset_optimizer``, ``reinit_embeddings``) are not
applied here.
"""

from __future__ import annotations

import types

import torch
from transformers import Trainer, TrainerCallback

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
    ``loss_options`` go to ``TSTLoss`` (``weights``, ``fused``, ...). ``step_losses`` holds each
    step's training loss.
    """

    def __init__(self, model, args, *, tokens, schedule: Schedule, seed: int = 0, **kwargs):
        loss_options = kwargs.pop("loss_options", {})
        if args.max_steps not in (-1, schedule.steps):
            raise ValueError(f"args.max_steps={args.max_steps} but the schedule has {schedule.steps} steps; "
                             "leave max_steps at -1 or give the same number")
        args.max_steps = schedule.steps
        self.schedule = schedule
        self.tst_batches = BatchMaker(tokens, schedule, seed, vocab_size=model.get_input_embeddings().num_embeddings)
        self.tst_loss = TSTLoss(model, **loss_options)
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
            warmup = int(self.args.warmup_steps)
            factor = lambda step: self.schedule.lr(step, 1.0, warmup, decay, final)  # noqa: E731
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step, k = int(inputs["tst_step"]), int(inputs["tst_micro"])
        if step != self.state.global_step:
            raise RuntimeError(f"the dataloader is at step {step} but the Trainer at {self.state.global_step}")
        a = self.args
        batch = self.tst_batches.micro_batch(step, k, a.gradient_accumulation_steps, a.process_index, a.world_size)
        loss = model(tst_batch=batch.to(a.device))
        self._micro_losses.append(loss.detach())
        return (loss, None) if return_outputs else loss
