"""The training loop: phase 1 (superposition) for round(r*N) steps, then next-token phase 2.

One model, one AdamW, one Warmup-Stable-Decay schedule over all N steps. The ``Trainer`` asks the
TST core for each phase's inputs and loss; everything it reads is a pure function of (seed, step),
so a run resumed from any checkpoint, the one at the switch included, repeats the same numbers.
Its counters live in one ``TrainState``, the thing a checkpoint restores besides weights,
optimizer and RNG. Under torchrun the same loop runs in every process (see ``distributed``): each
reads its own slice of every global batch, and only rank 0 writes files. What the trainer steps
with is ``optim``; what a run dir holds, and when it may be resumed, ``run_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..batches import BatchMaker
from ..config import Config
from ..data.reader import FIRST_READER_ORDER, READER_ORDER, validation_windows
from ..data.tokens import TokenData
from ..errors import CheckpointError, ConfigError, TrainingError
from ..faults import maybe_die
from ..fileio import write_text_atomic
from ..kernels import Choice
from ..loss import TSTLoss
from ..model_parts import CausalLMParts
from ..models import build_model, flops_per_position
from ..schedule import SequenceGroup
from ..superposition import fused_loss_path
from . import checkpoint as ckpt
from . import distributed
from .activation_checkpointing import checkpoint_activations, decoder_layers
from .device import autocast_for, resolve_device
from .metrics import MetricsLog, Progress, device_peak_flops
from .model_dir import export_hf, final_problem
from .run_dir import (
    CHECKPOINTS,
    FINAL,
    FINAL_RECORD,
    SUMMARY,
    TOKENIZER,
    job_lock,
    refuse_checkpoint,
    refuse_restart,
    refuse_resume,
    refuse_unverified,
    write_record,
)
from .stepping import lr_at, make_optimizer, reinitialise_embeddings
from .validation import validation_loss

# ----------------------------------------------------------------------------------------------
# Losses of a step
# ----------------------------------------------------------------------------------------------


def tst_loss_of(model: torch.nn.Module | CausalLMParts, cfg: Config) -> TSTLoss:
    """Return the run's loss: the public ``TSTLoss`` with the config's weighting and fusion.

    The families the config builds are causal decoders; a model from ``model.config_file`` is checked.
    """
    return TSTLoss(model, weights=cfg.tst.weights, mi_exponent=cfg.tst.mi_exponent, fused=cfg.train.fused_loss,
                   chunk_size=cfg.train.loss_chunk_size, check_causal=bool(cfg.model.config_file))


def loss_path_of(tst_loss: TSTLoss, device: torch.device) -> tuple[str, str]:
    """Return ``(path, why)``: the path the run's loss takes on ``device`` (``unfused``, or the fused loss's
    ``chunked`` or ``triton``, ``superposition.fused_loss_path``), refusing a bad ``TSTRAIN_LOSS_KERNEL``."""
    if not tst_loss.fused:
        return "unfused", "the head's logits whole, then the multi-hot CE (train.fused_loss)"
    try:
        choice = fused_loss_path(device)
    except (ValueError, RuntimeError) as e:  # the variable names no path, or one that cannot load
        raise ConfigError(str(e)) from None
    return choice.path, choice.reason


def first_non_finite_grad(model: torch.nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(distributed.local(p.grad)).all():
            return name
    return None


# ----------------------------------------------------------------------------------------------
# State and summary
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """The run's counters after ``step`` completed steps: what a checkpoint restores besides the
    weights, the optimizer and the RNG (``state.json``)."""

    VERSION: ClassVar[int] = 2
    step: int = 0
    data_tokens: int = 0
    flops: float = 0.0
    wall_time: float = 0.0
    skipped_steps: int = 0
    phase: int = 1  # the phase of the last completed step
    epoch: float = 0.0  # passes over the training split so far
    at_switch: bool = False  # written at the switch: kept when older checkpoints are pruned
    reader_order: str = READER_ORDER  # the reader's block order the steps so far read in (version 2)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainState:
        """Return the state of a checkpoint's ``state.json`` (this version's or an earlier one's)."""
        version = saved.get("version", 0)
        if version > cls.VERSION:
            raise CheckpointError(f"the checkpoint's state is version {version}, newer than this tstrain's "
                                  f"{cls.VERSION}: resume it with the tstrain that wrote it")
        if version == 0:  # before TrainState: the same counters, ``epochs`` for ``epoch``
            saved = {**saved, "epoch": saved.get("epochs", 0.0)}
        if version < 2:  # before the order was recorded: read by the stored permutation
            saved = {**saved, "reader_order": FIRST_READER_ORDER}
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in saved.items() if k in names})
        except TypeError as e:
            raise CheckpointError(f"the checkpoint's state.json is not a tstrain state ({e})") from None


@dataclass
class RunSummary:
    run_dir: Path
    final_val_loss: float
    steps: int
    switch_step: int
    data_tokens: int
    flops: float
    wall_time: float
    skipped_steps: int = 0  # steps whose loss or gradient was not finite, not applied (train.skip_nonfinite)
    loss_path: str = ""  # the head + loss path that ran: unfused, chunked or triton (``loss_path_of``)
    loss_path_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "run_dir": str(self.run_dir)}


@dataclass
class StepResult:
    """What one optimizer step did: its mean loss, grad norm, why it was not applied (if so), cost."""

    loss: float
    grad_norm: float
    problem: str | None
    lr: float
    groups: tuple[SequenceGroup, ...]
    seconds: float


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------


class Trainer:
    """Trains one run through both phases: ``fit()`` is set-up, then ``train_step`` per step with
    its cadence of logging, evaluation and checkpoints (``after_step``), then ``finish``.

    Seams for tests and callers: ``loss_fn(tst_loss, batch)`` computes a micro-batch's loss
    (by default ``TSTLoss.__call__``: the public loss of a ``Batch``), and ``on_step(done)`` is called after
    each optimizer step, before its metrics, evaluation and checkpoint. ``branch_points``: steps after
    which a checkpoint is written and never pruned, for other runs to branch off (``train.branch``).
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, ctx: distributed.Single | None = None,
                 loss_fn: Callable[..., torch.Tensor] = TSTLoss.__call__, on_step: Callable[[int], None] | None = None,
                 branch_points: Iterable[int] = ()):
        self.branch_points = frozenset(branch_points)
        self.owns_ctx = ctx is None  # then closed when fit() ends, or here if the set-up below fails
        self.ctx = ctx or distributed.setup(resolve_device(cfg))
        self.run = Path(run_dir)
        self.resume = resume
        self.loss_fn = loss_fn
        self.on_step = on_step
        try:
            if not cfg.data.path:
                raise ConfigError("no data: pass --data DIR (a dir made by `tstrain prepare-data`) or set data.path")
            self.data = TokenData(cfg.data.path)
            self.cfg = cfg.resolved_for(self.data.vocab_size)
            distributed.check_batch(self.cfg.train.batch_size, self.cfg.train.grad_accum, self.ctx.world_size)
        except BaseException:
            self.close()
            raise
        self.ckpt_root = self.run / CHECKPOINTS
        self.schedule = self.cfg.schedule  # what each step trains on: the public Schedule
        self.state = TrainState(phase=self.schedule.phase_after(0))
        self._flops_per_position: dict[int, float] = {}  # by sequence length: it walks the model

    def close(self) -> None:
        """Close the process context if this trainer made it (a caller's ``ctx`` stays the caller's)."""
        if self.owns_ctx:
            self.ctx.close()

    # -- set-up ------------------------------------------------------------------------------

    def find_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """Return the checkpoint to resume from (None: start at step 0), refusing what must not run
        (``run_dir``'s refusals), before anything is written: a refused resume changes nothing."""
        if not self.resume:
            refuse_restart(self.run)
            return None
        refuse_resume(self.run, self.cfg, self.data)
        problem = final_problem(self.run) if self.ctx.is_main and (self.run / FINAL).is_dir() else None
        if problem:
            print(f"{problem}: this run writes {self.run / FINAL} again when it ends")
        found = self.ctx.agree(ckpt.latest_good_checkpoint(self.ckpt_root) if self.ctx.is_main else None)
        if found is not None:
            refuse_checkpoint(found[0], TrainState.from_dict(found[1]).reader_order, found[1].get("config"), self.cfg)
        else:
            refuse_unverified(self.run)
            if self.ctx.is_main:
                print(f"no checkpoint under {self.ckpt_root}; starting from step 0")
        return found

    def build(self) -> None:
        """Make the model, its optimizer, the data reader and the validation windows."""
        cfg, device = self.cfg, self.ctx.device
        self.autocast = autocast_for(cfg, device)
        if device.type == "cpu":
            # AdamW's second moments underflow into denormals, which x86 CPUs process ~100x slower:
            # a 3x slower tiny run without this. Flushing them changes no loss we could measure.
            torch.set_flush_denormal(True)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len).to(device)
        self.model.train()
        self.parts = CausalLMParts(self.model)
        if cfg.train.activation_checkpointing == "full":
            checkpoint_activations(self.model)
        if cfg.train.compile == "on" or (cfg.train.compile == "auto" and device.type == "cuda"):
            for layer in decoder_layers(self.model):
                layer.compile()  # in place, per block (as TorchTitan does): names and state-dict keys unchanged
        self.run_model = self.ctx.shard(self.model)  # run_model(fn, *args) calls fn where the weights are whole
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.tst_loss = tst_loss_of(self.parts, cfg)
        self.loss_path = loss_path_of(self.tst_loss, device)
        if self.ctx.is_main:
            print(f"loss path: {Choice(*self.loss_path)}")  # as "no checkpoint ...": before the summary
        # Tokens checks every id read against the data's vocabulary, which the model's covers (resolved_for).
        self.batches = BatchMaker(self.data.train, self.schedule, cfg.train.seed)
        self.batches.check_appetite(cfg.data.max_epochs)
        self.val = validation_windows(self.data.val, cfg.train.seq_len, cfg.data.val_windows)
        self.peak = device_peak_flops(device, cfg.log.peak_flops)

    def setup(self) -> None:
        """Check the run dir, write its config, build everything and restore the newest checkpoint."""
        found = self.find_checkpoint()
        self.ctx.barrier()  # every process has read the run dir before rank 0 writes to it
        if self.ctx.is_main:
            write_record(self.run, self.cfg, self.data)
        self.build()
        if found is not None:
            path, saved = found
            ckpt.load_checkpoint(path, self.model, self.optimizer, self.ctx.rank)
            self.state = TrainState.from_dict(saved)
            if self.ctx.is_main:
                print(f"resumed from {path} (step {self.state.step}, phase {self.schedule.phase(self.state.step)})")
        log = self.cfg.log
        wandb = {"project": log.wandb_project, "name": log.wandb_run or self.run.name,
                 "config": self.cfg.to_dict()} if log.wandb else None
        self.log = MetricsLog(self.run, log.tensorboard, resume_step=self.state.step if found else None,
                              enabled=self.ctx.is_main, wandb=wandb)
        self._wall_offset, self._t0 = self.state.wall_time, time.perf_counter()

    # -- one step ----------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self._wall_offset + time.perf_counter() - self._t0

    def step_flops(self, groups: tuple[SequenceGroup, ...]) -> float:
        """Return the model FLOPs of a step's groups (positions the transformer sees, fwd + bwd)."""
        total = 0.0
        for g in groups:
            n = g.positions
            if n not in self._flops_per_position:
                self._flops_per_position[n] = flops_per_position(self.model, n)
            total += self._flops_per_position[n] * g.count * n
        return total

    def at_switch(self, step: int) -> None:
        """Apply the switch's options: clear AdamW moments, re-initialise embedding and head."""
        if self.schedule.is_switch(step) and self.cfg.tst.reset_optimizer:
            self.optimizer.state.clear()
        if self.schedule.is_switch(step) and self.cfg.tst.reinit_embeddings:
            reinitialise_embeddings(self.parts, self.optimizer, self.cfg)

    def forward_backward(self, step: int) -> float:
        """Run this process's micro-batches of ``step``, accumulating gradients; return the global mean loss."""
        ctx, accum = self.ctx, self.cfg.train.grad_accum
        loss_sum = 0.0
        for k, batch in enumerate(self.batches.micro_batches(step, accum, ctx.rank, ctx.world_size)):
            batch = batch.to(ctx.device, non_blocking=True)
            ctx.grad_sync(k == accum - 1)  # reduce gradients across processes once, after the last micro-batch
            with self.autocast():
                loss = self.run_model(self.loss_fn, self.tst_loss, batch)
            (loss / accum).backward()
            loss_sum += loss.item() / accum
        return ctx.mean(loss_sum)  # every process holds the same global loss, so all agree on what follows

    def check_finite(self, step: int, loss: float) -> tuple[float, str | None]:
        """Return ``(grad norm after clipping, problem)``: problem names a non-finite loss or gradient."""
        phase = self.schedule.phase(step)
        if not math.isfinite(loss):
            return math.nan, f"non-finite loss ({loss}) at step {step + 1} (phase {phase})"
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = distributed.full_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(grad_norm):
            where = next((n for n in self.ctx.gather(first_non_finite_grad(self.model)) if n), "an unknown parameter")
            return grad_norm, f"non-finite gradient at step {step + 1} (phase {phase}) in {where}"
        return grad_norm, None

    def train_step(self, step: int) -> StepResult:
        """Run optimizer step ``step`` (0-based) and account it in ``self.state``."""
        self.at_switch(step)
        lr = lr_at(self.cfg, step, self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        loss = self.forward_backward(step)
        grad_norm, problem = self.check_finite(step, loss)
        if problem is None:
            self.optimizer.step()
        elif self.cfg.train.skip_nonfinite:
            self.state.skipped_steps += 1
            if self.ctx.is_main:
                print(f"skipping step {step + 1}: {problem} (train.skip_nonfinite); no update, "
                      f"{self.state.skipped_steps} skipped so far")
        else:
            raise TrainingError(
                f"{problem}; the last good checkpoint under {self.ckpt_root} is kept. Lower this run's learning rate "
                f"({self.cfg.optim.lr:g}: --lr, or --baseline-lr for a comparison's baseline), raise "
                "optim.warmup_steps or check the data; train.skip_nonfinite=true skips such steps instead"
            )
        self.optimizer.zero_grad(set_to_none=True)
        groups = self.schedule.plan(step)
        self.state.step = step + 1
        self.state.phase = self.schedule.phase(step)
        self.state.data_tokens += self.schedule.tokens_read(step)  # data tokens this step consumed as inputs
        self.state.flops += self.step_flops(groups)
        return StepResult(loss, grad_norm, problem, lr, groups, time.perf_counter() - start)

    # -- cadence -----------------------------------------------------------------------------

    def log_step(self, step: int, result: StepResult) -> None:
        """Write the metrics row of completed step ``step + 1``."""
        s, read = self.state, self.schedule.tokens_read(step)
        row = {"step": s.step, "phase": s.phase, "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
               "data_tokens": s.data_tokens, "flops": s.flops, "wall_time": self.elapsed(),
               "tokens_per_s": read / result.seconds,
               "positions_per_s": self.cfg.train.batch_size * self.cfg.train.seq_len / result.seconds,
               "epoch": self.batches.epochs(s.step), "skipped_steps": s.skipped_steps,
               "bag_size": max(g.bag_size for g in result.groups), "bag_share": self.schedule.bag_share(step)}
        if self.peak > 0:
            row["mfu"] = self.step_flops(result.groups) / result.seconds / self.peak
        self.log.write(row)

    def evaluate(self) -> float:
        """Measure and log the next-token validation loss after ``state.step`` steps."""
        v = validation_loss(self.parts, self.val, self.cfg.train.eval_batch_size, self.ctx.device, self.autocast,
                            self.run_model, self.ctx)
        s = self.state
        self.log.write({"step": s.step, "phase": self.schedule.phase_after(s.step), "val_loss": v,
                        "data_tokens": s.data_tokens, "flops": s.flops, "wall_time": self.elapsed()})
        return v

    def save(self) -> None:
        """Write the checkpoint of ``state.step`` completed steps and prune older ones."""
        s = self.state
        s.phase, s.wall_time = self.schedule.phase_after(s.step), self.elapsed()
        s.epoch, s.at_switch = self.batches.epochs(s.step), self.schedule.is_switch(s.step)
        state = {**s.to_dict(), "config": self.cfg.to_dict()}  # what the steps so far trained with (resume checks it)
        if s.step in self.branch_points:
            state["branch_point"] = True  # kept by prune_checkpoints
        if self.ctx.distributed:
            ckpt.save_sharded_checkpoint(self.ckpt_root, s.step, self.model, self.optimizer, state, self.ctx)
        else:
            ckpt.save_checkpoint(self.ckpt_root, s.step, self.model, self.optimizer, state)
        if self.ctx.is_main:
            ckpt.prune_checkpoints(self.ckpt_root, self.cfg.train.keep_checkpoints)

    def after_step(self, step: int, result: StepResult) -> float | None:
        """Log, evaluate and checkpoint as the cadence asks; return the val loss if one was measured."""
        done, N, tr, S = self.state.step, self.cfg.train.steps, self.cfg.train, self.schedule.switch_step
        switched = self.schedule.is_switch(done)
        if done % self.cfg.log.every == 0 or done in (S, S + 1, N):  # the steps around the switch always
            self.log_step(step, result)
        val = None
        if switched or (tr.eval_every and done % tr.eval_every == 0) or done == N:
            val = self.evaluate()
        every = tr.checkpoint_every and done % tr.checkpoint_every == 0
        if switched or done == N or every or done in self.branch_points:
            self.save()
        maybe_die("step", done, self.ctx.rank)
        return val

    # -- the run -----------------------------------------------------------------------------

    def fit(self) -> RunSummary:
        """Train from the restored step to the end; return the summary (and write the final model).

        The run dir's lock (``run_dir.job_lock``) is held throughout: a second job on the same dir is refused.
        A process context the trainer made (no ``ctx`` given: ``distributed.setup``, so that under ``torchrun``
        the processes share each step as ``train``'s do) is closed when it ends.
        """
        try:
            with job_lock(self.ctx, self.run):
                self.setup()
                if self.state.step == 0:
                    self.evaluate()
                return self.finish(self.train_steps())
        finally:
            self.close()

    def train_steps(self) -> float:
        """Train from the restored step to the last, each with its cadence (``after_step``); return the last
        validation loss measured (NaN if none was)."""
        progress = Progress(self.cfg.train.steps, self.state.step, self.cfg.log.progress and self.ctx.is_main)
        last_val = math.nan
        try:
            for step in range(self.state.step, self.cfg.train.steps):
                result = self.train_step(step)
                progress.update(self.state.phase, result.loss, self.schedule.tokens_read(step) / result.seconds)
                if self.on_step is not None:
                    self.on_step(self.state.step)
                val = self.after_step(step, result)
                last_val = last_val if val is None else val
        finally:
            progress.close()
            self.log.close()
        return last_val

    def finish(self, last_val: float) -> RunSummary:
        """Write ``final/`` (a Hugging Face model dir) and ``summary.json``; return the summary."""
        if math.isnan(last_val):  # resumed from the final checkpoint: nothing left to run
            last_val = validation_loss(self.parts, self.val, self.cfg.train.eval_batch_size, self.ctx.device,
                                       self.autocast, self.run_model, self.ctx)
        # gathered from every process
        weights = ckpt.full_model_state_dict(self.model) if self.ctx.distributed else None
        s = self.state
        summary = RunSummary(self.run, last_val, self.cfg.train.steps, self.cfg.switch_step, s.data_tokens, s.flops,
                             self.elapsed(), s.skipped_steps, *self.loss_path)
        if self.ctx.is_main:
            export_hf(self.model, self.run / FINAL, self.run / TOKENIZER, self.data.manifest.get("eos_token"), weights,
                      record=self.run / FINAL_RECORD)
            write_text_atomic(self.run / SUMMARY, json.dumps(summary.to_dict(), indent=2) + "\n")
        return summary


def train(cfg: Config, out_dir: str | Path, resume: bool = False, **seams: Any) -> RunSummary:
    """Train through both phases into ``out_dir``; return the final summary.

    Writes what a run dir holds (``run_dir``): ``config.toml``, ``metrics.jsonl``, ``checkpoints/``, ``final/``
    (a Hugging Face model dir) and ``summary.json``. With ``resume``, continues from the newest checkpoint
    that verifies. Under torchrun every process calls this; they share the work of each step and rank 0
    writes. ``seams`` go to the ``Trainer`` (``loss_fn``, ``on_step``, ``branch_points``).
    """
    return Trainer(cfg, out_dir, resume, **seams).fit()
