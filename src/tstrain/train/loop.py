"""The training loop: phase 1 (superposition) for round(r*N) steps, then next-token phase 2.

One model, one AdamW, one Warmup-Stable-Decay schedule over all N steps. The ``Trainer`` asks the
TST core for each phase's inputs and loss; everything it reads is a pure function of (seed, step),
so a run resumed from any checkpoint, the one at the switch included, repeats the same numbers.
Its counters live in one ``TrainState``, the thing a checkpoint restores besides weights,
optimizer and RNG. Under torchrun the same loop runs in every process (see ``distributed``): each
reads its own slice of every global batch, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import run_lock
from ..batches import Batch, BatchMaker
from ..config import Config, resume_differences
from ..data.reader import FIRST_READER_ORDER, READER_ORDER, validation_windows
from ..data.tokens import TokenData
from ..errors import CheckpointError, ConfigError, DataError, TrainingError, TstrainError
from ..evaluation import validation_loss
from ..faults import maybe_die
from ..fileio import read_json, sha256_file, write_text_atomic
from ..loss import TSTLoss
from ..model_io import TOKENIZER as RUN_TOKENIZER
from ..model_io import export_hf
from ..models import CausalLMParts, build_model, flops_per_position
from ..optim import adamw
from ..schedule import SequenceGroup
from . import checkpoint as ckpt
from . import distributed
from .metrics import MetricsLog, Progress, device_peak_flops

DATA_IDENTITY = "data.json"  # in the run dir: which data the run trains on (see check_data_identity)

# ----------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------


def lr_at(cfg: Config, step: int) -> float:
    """Return the LR of ``step``: one WSD schedule over the run, or one per phase if restarted."""
    o = cfg.optim
    return cfg.schedule.lr(step, o.lr, o.warmup_steps, o.decay_fraction, o.final_lr_fraction,
                           restart=cfg.tst.restart_schedule)


# ----------------------------------------------------------------------------------------------
# Losses of a step
# ----------------------------------------------------------------------------------------------


def tst_loss_of(model: torch.nn.Module | CausalLMParts, cfg: Config) -> TSTLoss:
    """Return the run's loss: the public ``TSTLoss`` with the config's weighting and fusion."""
    return TSTLoss(model, weights=cfg.tst.weights, mi_exponent=cfg.tst.mi_exponent, fused=cfg.train.fused_loss,
                   chunk_size=cfg.train.loss_chunk_size)


def call_loss(tst_loss: TSTLoss, batch: Batch) -> torch.Tensor:
    """Return the loss of one micro-batch: the ``Trainer``'s default ``loss_fn``."""
    return tst_loss(batch)


# ----------------------------------------------------------------------------------------------
# Set-up helpers
# ----------------------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """Return the run's AdamW (``optim.adamw``: weight decay on matrices only)."""
    o = cfg.optim
    return adamw(model, o.lr, weight_decay=o.weight_decay, betas=(o.beta1, o.beta2), eps=o.eps,
                 fused=device.type == "cuda")


def resolve_device(cfg: Config) -> torch.device:
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available; use --set train.device=cpu")
    return torch.device(cfg.train.device)


def autocast_for(cfg: Config, device: torch.device):
    """Return a context factory: bf16 autocast on CUDA (or when asked), else nothing."""
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


@torch.no_grad()
def reinitialise_embeddings(parts: CausalLMParts, optimizer: torch.optim.Optimizer, cfg: Config) -> None:
    """Redraw the input embedding and LM head from N(0, init_std) and drop their AdamW state.

    The paper's negative control at the switch. The draw is seeded by (seed, switch step), so a
    run resumed from the switch checkpoint redraws the same weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed * 1_000_003 + cfg.switch_step)
        for p in {id(p): p for p in (parts.embedding.weight, parts.head.weight)}.values():
            p.normal_(0.0, cfg.model.init_std)
            optimizer.state.pop(p, None)


def first_non_finite_grad(model: torch.nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(distributed.local(p.grad)).all():
            return name
    return None


def check_resume_config(saved: dict[str, Any], cfg: Config) -> None:
    """Raise ConfigError if ``cfg`` differs from the run's saved config in a field that matters."""
    diffs = resume_differences(saved, cfg)
    if diffs:
        raise ConfigError(
            "cannot resume with a different config (" + "; ".join(diffs) + "). "
            "Resume with the run's saved config.toml (`tstrain train --out RUN --resume` alone loads it), "
            "or start a new run in another --out"
        )


def check_checkpoint_config(trained: dict[str, Any] | None, cfg: Config, path: Path) -> None:
    """Raise ConfigError if ``cfg`` differs from the config a checkpoint's steps were trained with (recorded in
    its ``state.json``) in a field that may not change on resume: an edited ``config.toml`` is caught too."""
    diffs = resume_differences(trained, cfg) if trained else []
    if diffs:
        raise ConfigError(
            f"cannot resume: the steps in {path} were trained with another config than this one ({'; '.join(diffs)}); "
            "put the saved values back (config.toml or the flags), or start a new run in another --out"
        )


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


def data_differences(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Return the identity fields (``TokenData.identity``) in which a run's recorded data (``data.json``)
    differ from ``now``'s; the path is not one of them (a moved copy is the same data)."""
    return [k for k in now if k in was and was[k] != now[k]]


def keep_tokenizer(data: TokenData, run: Path) -> None:
    """Copy the data's tokenizer into the run (once): the model keeps the tokenizer it was trained with
    whatever later happens to the data dir (re-prepared, moved, edited)."""
    own = run / RUN_TOKENIZER
    if own.is_file() and sha256_file(own) == data.manifest.get("tokenizer_sha256"):
        return
    tmp = own.with_name(f".{own.name}.tmp")
    shutil.copyfile(data.path / "tokenizer.json", tmp)
    os.replace(tmp, own)


def check_reader_order(order: str, what: str) -> None:
    """Refuse to resume ``what`` (a run dir, a checkpoint) whose steps read the data in another ``order``:
    going on in this reader's order would read some tokens twice in an epoch and others never."""
    if order != READER_ORDER:
        raise DataError(
            f"{what} read its data in the order {order!r}, and this tstrain reads them in {READER_ORDER!r}: "
            "resuming would reread some tokens and skip others. Finish the run with the tstrain version that "
            "started it, or start a new run in another --out"
        )


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
    (``call_loss``: the public ``TSTLoss`` on a ``Batch``), and ``on_step(done)`` is called after
    each optimizer step, before its metrics, evaluation and checkpoint.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, ctx: distributed.Single | None = None,
                 loss_fn: Callable[..., torch.Tensor] = call_loss, on_step: Callable[[int], None] | None = None):
        self.ctx = ctx or distributed.Single(resolve_device(cfg))
        self.run = Path(run_dir)
        self.resume = resume
        self.loss_fn = loss_fn
        self.on_step = on_step
        if not cfg.data.path:
            raise ConfigError("no data: pass --data DIR (a dir made by `tstrain prepare-data`) or set data.path")
        self.data = TokenData(cfg.data.path)
        self.cfg = cfg.resolved_for(self.data.vocab_size)
        distributed.check_batch(self.cfg.train.batch_size, self.cfg.train.grad_accum, self.ctx.world_size)
        self.ckpt_root = self.run / "checkpoints"
        self.schedule = self.cfg.schedule  # what each step trains on: the public Schedule
        self.state = TrainState(phase=self.schedule.phase_after(0))
        self._flops_per_position: dict[int, float] = {}  # by sequence length: it walks the model

    # -- set-up ------------------------------------------------------------------------------

    def find_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """Return the checkpoint to resume from (None: start at step 0), refusing what must not run."""
        if not self.resume:
            if ckpt.list_checkpoints(self.ckpt_root):
                raise ConfigError(f"{self.run} already holds checkpoints; "
                                  "pass --resume to continue it or choose a new --out")
            return None
        saved = self.run / "config.toml"
        if saved.is_file():
            check_resume_config(tomllib.loads(saved.read_text()), self.cfg)
        self.check_data_identity()
        found = self.ctx.agree(ckpt.latest_good_checkpoint(self.ckpt_root) if self.ctx.is_main else None)
        if found is not None:  # before anything is written: a refused resume changes nothing
            check_reader_order(TrainState.from_dict(found[1]).reader_order, f"the checkpoint {found[0]}")
            check_checkpoint_config(found[1].get("config"), self.cfg, found[0])
        if found is None and ckpt.list_checkpoints(self.ckpt_root):
            raise CheckpointError(
                f"none of the {len(ckpt.list_checkpoints(self.ckpt_root))} checkpoints under {self.ckpt_root} verifies "
                "(each is named in the warnings above); nothing was changed. To start over, delete that dir or train "
                "into a new --out"
            )
        if found is None and self.ctx.is_main:
            print(f"no checkpoint under {self.ckpt_root}; starting from step 0")
        return found

    def check_data_identity(self) -> None:
        """Refuse to resume on data other than the run's (a moved copy of the same data is fine)."""
        saved = self.run / DATA_IDENTITY
        if not saved.is_file():
            return
        was = read_json(saved, DataError, "restore it, or start a new run in another --out")
        diffs = data_differences(was, self.data.identity)
        if diffs:
            raise DataError(
                f"{self.run} was trained on other data than {self.data.path} ({', '.join(diffs)} differ; the run's "
                f"data were at {was.get('path')}): resume it with that data, or start a new run in another --out"
            )
        check_reader_order(was.get("reader_order", FIRST_READER_ORDER), str(self.run))

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
            distributed.checkpoint_activations(self.model)
        if cfg.train.compile == "on" or (cfg.train.compile == "auto" and device.type == "cuda"):
            for layer in distributed.decoder_layers(self.model):
                layer.compile()  # in place, per block (as TorchTitan does): names and state-dict keys unchanged
        self.run_model = self.ctx.shard(self.model)  # run_model(fn, *args) calls fn where the weights are whole
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.tst_loss = tst_loss_of(self.parts, cfg)
        self.batches = BatchMaker(self.data.train, self.schedule, cfg.train.seed)  # Tokens checks every id read
        self.batches.check_appetite(cfg.data.max_epochs)
        self.val = validation_windows(self.data.val, cfg.train.seq_len, cfg.data.val_windows)
        self.peak = device_peak_flops(device, cfg.log.peak_flops)

    def setup(self) -> None:
        """Check the run dir, write its config, build everything and restore the newest checkpoint."""
        found = self.find_checkpoint()
        self.ctx.barrier()  # every process has read the run dir before rank 0 writes to it
        if self.ctx.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run / "config.toml", self.cfg.to_toml())  # a kill mid-write must not break --resume
            identity = {**self.data.identity, "path": str(self.data.path.resolve()), "reader_order": READER_ORDER,
                        "eos_token": self.data.manifest.get("eos_token")}
            write_text_atomic(self.run / DATA_IDENTITY, json.dumps(identity, indent=2) + "\n")
            keep_tokenizer(self.data, self.run)
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
        lr = lr_at(self.cfg, step)
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
                f"{problem}; the last good checkpoint under {self.ckpt_root} is kept. Lower optim.lr, raise "
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
        if switched or done == N or (tr.checkpoint_every and done % tr.checkpoint_every == 0):
            self.save()
        maybe_die("step", done, self.ctx.rank)
        return val

    # -- the run -----------------------------------------------------------------------------

    def fit(self) -> RunSummary:
        """Train from the restored step to the end; return the summary (and write the final model)."""
        self.setup()
        if self.state.step == 0:
            self.evaluate()
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
        return self.finish(last_val)

    def finish(self, last_val: float) -> RunSummary:
        """Write ``final/`` (a Hugging Face model dir) and ``summary.json``; return the summary."""
        if math.isnan(last_val):  # resumed from the final checkpoint: nothing left to run
            last_val = validation_loss(self.parts, self.val, self.cfg.train.eval_batch_size, self.ctx.device,
                                       self.autocast, self.run_model, self.ctx)
        # gathered from every process
        weights = ckpt.full_model_state_dict(self.model) if self.ctx.distributed else None
        s = self.state
        summary = RunSummary(self.run, last_val, self.cfg.train.steps, self.cfg.switch_step, s.data_tokens, s.flops,
                             self.elapsed(), s.skipped_steps)
        if self.ctx.is_main:
            export_hf(self.model, self.run / "final", self.run / RUN_TOKENIZER, self.data.manifest.get("eos_token"),
                      weights)
            write_text_atomic(self.run / "summary.json", json.dumps(summary.to_dict(), indent=2) + "\n")
        return summary


def train(cfg: Config, out_dir: str | Path, resume: bool = False, **seams: Any) -> RunSummary:
    """Train through both phases into ``out_dir``; return the final summary.

    Writes ``config.toml``, ``metrics.jsonl``, ``checkpoints/`` and ``final/`` (a Hugging Face
    model dir). With ``resume``, continues from the newest checkpoint that verifies. Under
    torchrun every process calls this; they share the work of each step and rank 0 writes.
    ``seams`` go to the ``Trainer`` (``loss_fn``, ``on_step``).
    """
    ctx = distributed.setup(resolve_device(cfg))
    try:
        with lock_run_dir(ctx, Path(out_dir)):
            return Trainer(cfg, out_dir, resume, ctx, **seams).fit()
    finally:
        ctx.close()


@contextlib.contextmanager
def lock_run_dir(ctx: distributed.Single, run: Path):
    """Hold the run dir's exclusive lock (``run_lock``) for the job: rank 0 takes it for all the job's
    processes, and every process stops if another job holds it."""
    with contextlib.ExitStack() as stack:
        refused = None
        if ctx.is_main:
            try:
                stack.enter_context(run_lock.locked(run, "run dir"))
            except TstrainError as e:
                refused = e
        refused = ctx.agree(refused)
        if refused is not None:
            raise refused
        yield
