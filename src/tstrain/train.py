"""The training loop: phase 1 (superposition) for round(r*N) steps, then next-token phase 2.

One model, one AdamW, one Warmup-Stable-Decay schedule over all N steps. The loop asks the TST
core for each phase's inputs and loss; everything it reads is a pure function of (seed, step), so
a run resumed from any checkpoint, the one at the switch included, repeats the same numbers.
Under torchrun the same loop runs in every process (see ``distributed``): each reads its own
slice of every global batch, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import distributed
from .config import Config, ConfigError, validate
from .data import TokenData
from .reader import WindowReader, check_appetite, validation_windows
from .faults import maybe_die
from .metrics import MetricsLog, Progress, device_peak_flops
from .models import CausalLMParts, build_model, flops_per_position, padded_vocab
from .phases import bag_share, positions, window_schedule
from .superposition import (
    bag_embeddings,
    linear_multi_hot_cross_entropy,
    multi_hot_cross_entropy,
    next_token_batch,
    superposition_batch,
)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the last good checkpoint is kept."""


# Fields that may differ between a run and its resumption: they do not change the numbers.
RESUME_FREE = {"log", "train.device", "train.checkpoint_every", "train.keep_checkpoints", "train.eval_batch_size", "data.path",
               "train.skip_nonfinite"}


# ----------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------


def wsd_lr(step: int, total: int, lr: float, warmup: int, decay_fraction: float, final_fraction: float) -> float:
    """Return the Warmup-Stable-Decay learning rate at ``step`` of ``total``.

    Linear warmup over ``warmup`` steps, constant, then linear decay to ``final_fraction * lr``
    over the last ``round(decay_fraction * total)`` steps (reached at the final step).
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = round(decay_fraction * total)
    decay_start = total - decay_steps
    if decay_steps == 0 or step < decay_start:
        return lr
    progress = (step - decay_start + 1) / decay_steps
    return lr * (1.0 - (1.0 - final_fraction) * progress)


def lr_at(cfg: Config, step: int) -> float:
    """Return the LR of ``step``: one schedule over the run, or one per phase if restarted."""
    o, n, switch = cfg.optim, cfg.train.steps, cfg.switch_step
    if cfg.tst.restart_schedule and 0 < switch:
        if step < switch:
            return wsd_lr(step, switch, o.lr, min(o.warmup_steps, switch), o.decay_fraction, o.final_lr_fraction)
        return wsd_lr(step - switch, n - switch, o.lr, min(o.warmup_steps, n - switch), o.decay_fraction, o.final_lr_fraction)
    return wsd_lr(step, n, o.lr, o.warmup_steps, o.decay_fraction, o.final_lr_fraction)


# ----------------------------------------------------------------------------------------------
# Pieces of a step
# ----------------------------------------------------------------------------------------------


def bag_loss(parts: CausalLMParts, window: torch.Tensor, bag_size: int, cfg: Config) -> torch.Tensor:
    """Return the loss of token windows read for bags of ``bag_size``: the MCE, or next-token CE at 1.

    A mixture-of-experts model adds its router load-balancing loss in both phases, as in ordinary
    training.
    """
    if bag_size > 1:
        inputs, targets = superposition_batch(window, positions(cfg, bag_size), bag_size, cfg.tst.variant)
        if inputs.dim() == 3:  # bag inputs: averaged embeddings fed to the unchanged transformer
            hidden, aux = parts.hidden_states_and_aux_loss(inputs_embeds=bag_embeddings(parts.embedding.weight, inputs))
        else:
            hidden, aux = parts.hidden_states_and_aux_loss(input_ids=inputs)
        weights = cfg.tst.weights if targets.shape[-1] > 1 else "uniform"
    else:
        inputs, targets = next_token_batch(window)
        hidden, aux = parts.hidden_states_and_aux_loss(input_ids=inputs)
        weights = "uniform"
    loss = head_loss(parts, hidden, targets, weights, cfg)
    return loss if aux is None else loss + aux


def phase_loss(parts: CausalLMParts, window: torch.Tensor, phase: int, cfg: Config) -> torch.Tensor:
    """Return the loss of a phase-1 (bags of ``tst.bag_size``) or phase-2 (next-token) batch."""
    return bag_loss(parts, window, cfg.tst.bag_size if phase == 1 else 1, cfg)


def step_loss(parts: CausalLMParts, pieces: list[tuple[int, torch.Tensor]], cfg: Config) -> torch.Tensor:
    """Return the mean loss over a micro-batch's sequences, which may mix bag sizes (a blend).

    Each piece's loss is a mean over its sequences, so pieces are weighted by their sequence count.
    """
    if len(pieces) == 1:
        return bag_loss(parts, pieces[0][1], pieces[0][0], cfg)
    total = sum(window.shape[0] for _, window in pieces)
    return sum(bag_loss(parts, window, size, cfg) * (window.shape[0] / total) for size, window in pieces)


def uses_fused_loss(parts: CausalLMParts, cfg: Config) -> bool:
    """Return whether the LM head and the loss run fused in chunks (large vocabularies)."""
    mode = cfg.train.fused_loss
    if mode == "off" or not parts.plain_linear_head:
        return False
    return mode == "on" or parts.vocab_size >= 32768


def head_loss(parts: CausalLMParts, hidden: torch.Tensor, targets: torch.Tensor, weights, cfg: Config) -> torch.Tensor:
    """Return the MCE of the head's logits against ``targets``, fused over chunks when configured.

    Target ids are not checked here (no device sync per micro-batch): ``TokenData`` checked every
    id against the tokenizer at load, and ``resolve_for_data`` the model's vocabulary against it.
    """
    if uses_fused_loss(parts, cfg):
        return linear_multi_hot_cross_entropy(hidden, parts.head.weight, targets, weights, chunk_size=cfg.train.loss_chunk_size,
                                              mi_exponent=cfg.tst.mi_exponent, check_ids=False)
    return multi_hot_cross_entropy(parts.logits(hidden), targets, weights, mi_exponent=cfg.tst.mi_exponent, check_ids=False)


def _next_token_logits(parts: CausalLMParts, inputs: torch.Tensor) -> torch.Tensor:
    return parts.logits(parts.hidden_states(input_ids=inputs))


@torch.no_grad()
def validation_loss(parts: CausalLMParts, windows: torch.Tensor, batch_size: int, device, autocast, run=None,
                    ctx: distributed.Single | None = None) -> float:
    """Return the mean next-token loss over fixed held-out windows (equal-length, so a plain mean).

    ``run(fn, *args)`` calls the model (FSDP2's root unit when sharded). Under torchrun (``ctx``)
    each process evaluates its share of every round of ``world_size`` batches and the sums are
    reduced; a process with no windows left in the last round runs one window at weight 0, since
    every process must take part in each sharded forward.
    """
    run = run or (lambda fn, *args: fn(*args))
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    was_training = parts.model.training
    parts.model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size * world):
        chunk = windows[i + rank * batch_size : i + (rank + 1) * batch_size]
        weight = chunk.shape[0]
        if weight == 0:
            chunk = windows[:1]
        inputs, targets = next_token_batch(chunk.to(device))
        with autocast():
            logits = run(_next_token_logits, parts, inputs)
        total += multi_hot_cross_entropy(logits, targets).item() * weight
        count += weight
    parts.model.train(was_training)
    if world > 1:
        return ctx.mean(total) / ctx.mean(float(count))
    return total / count


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """Return AdamW with weight decay on matrices only (not norms or biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    o = cfg.optim
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=device.type == "cuda",
    )


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
    now = cfg.to_dict()
    diffs = []
    for section, values in saved.items():
        if section in RESUME_FREE:
            continue
        for key, old in values.items():
            if f"{section}.{key}" in RESUME_FREE:
                continue
            new = now.get(section, {}).get(key)
            if new != old:
                diffs.append(f"{section}.{key}: saved {old!r}, now {new!r}")
    if diffs:
        raise ConfigError(
            "cannot resume with a different config (" + "; ".join(diffs) + "). "
            "Resume with the run's saved config.toml (`tstrain train --out RUN --resume` alone loads it), "
            "or start a new run in another --out"
        )


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    run_dir: Path
    final_val_loss: float
    steps: int
    switch_step: int
    data_tokens: int
    flops: float
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "run_dir": str(self.run_dir)}


def resolve_for_data(cfg: Config, data: TokenData) -> None:
    """Fill the config fields that follow the data (vocab size, max positions), checking them."""
    m = cfg.model
    if m.vocab_size == 0:
        m.vocab_size = padded_vocab(data.vocab_size, m.pad_vocab_multiple)
    elif m.vocab_size < data.vocab_size:
        raise ConfigError(
            f"model.vocab_size={m.vocab_size} is smaller than the data's vocabulary of {data.vocab_size} "
            f"(tokenizer of {data.path}); set model.vocab_size >= {data.vocab_size} or 0 to follow the data"
        )
    if m.max_position_embeddings == 0:
        m.max_position_embeddings = cfg.train.seq_len


def train(cfg: Config, out_dir: str | Path, resume: bool = False) -> RunSummary:
    """Train through both phases into ``out_dir``; return the final summary.

    Writes ``config.toml``, ``metrics.jsonl``, ``checkpoints/`` and ``final/`` (a Hugging Face
    model dir). With ``resume``, continues from the newest checkpoint that verifies. Under
    torchrun every process calls this; they share the work of each step and rank 0 writes.
    """
    ctx = distributed.setup(resolve_device(cfg))
    try:
        return _train(cfg, Path(out_dir), resume, ctx)
    finally:
        ctx.close()


def _train(cfg: Config, run: Path, resume: bool, ctx: distributed.Single) -> RunSummary:
    if not cfg.data.path:
        raise ConfigError("no data: pass --data DIR (a dir made by `tstrain prepare-data`) or set data.path")
    data = TokenData(cfg.data.path)
    resolve_for_data(cfg, data)
    validate(cfg)
    distributed.check_batch(cfg.train.batch_size, cfg.train.grad_accum, ctx.world_size)
    ckpt_root = run / "checkpoints"

    found = None
    if resume:
        saved_path = run / "config.toml"
        if saved_path.is_file():
            check_resume_config(tomllib.loads(saved_path.read_text()), cfg)
        found = ctx.agree(ckpt.latest_good_checkpoint(ckpt_root) if ctx.is_main else None)
        if found is None and ctx.is_main:
            print(f"no checkpoint under {ckpt_root}; starting from step 0")
    elif ckpt.list_checkpoints(ckpt_root):
        raise ConfigError(f"{run} already holds checkpoints; pass --resume to continue it or choose a new --out")
    ctx.barrier()  # every process has read the run dir before rank 0 writes to it
    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        tmp = run / ".config.toml.tmp"  # atomic: a kill mid-write must not break the next --resume
        tmp.write_text(cfg.to_toml())
        os.replace(tmp, run / "config.toml")

    device = ctx.device
    autocast = autocast_for(cfg, device)
    if device.type == "cpu":
        # AdamW's second moments underflow into denormals, which x86 CPUs process ~100x slower:
        # a 3x slower tiny run without this. Flushing them changes no loss we could measure.
        torch.set_flush_denormal(True)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len).to(device)
    model.train()
    parts = CausalLMParts(model)
    if cfg.train.compile == "on" or (cfg.train.compile == "auto" and device.type == "cuda"):
        for layer in distributed.decoder_layers(model):
            layer.compile()  # in place, per block (as TorchTitan does): names and state-dict keys unchanged
    run_model = ctx.shard(model)  # run_model(fn, *args) calls fn where the weights are whole
    optimizer = make_optimizer(model, cfg, device)

    schedule = window_schedule(cfg)
    reader = WindowReader(data.train, schedule, cfg.train.seed)
    check_appetite(reader, cfg.train.steps, cfg.data.max_epochs)
    val = validation_windows(data.val, cfg.train.seq_len, cfg.data.val_windows)

    N, switch, B, L = cfg.train.steps, cfg.switch_step, cfg.train.batch_size, cfg.train.seq_len
    accum = cfg.train.grad_accum
    per_position: dict[int, float] = {}  # flops_per_position by sequence length (it walks the model)

    def step_flops(groups) -> float:
        total = 0.0
        for g in groups:
            n = positions(cfg, g.bag_size)
            if n not in per_position:
                per_position[n] = flops_per_position(model, n)
            total += per_position[n] * g.count * n
        return total
    peak = device_peak_flops(device, cfg.log.peak_flops)

    start, data_tokens, flops, wall_offset, skipped = 0, 0, 0.0, 0.0, 0
    if found is not None:
        path, state = found
        ckpt.load_checkpoint(path, model, optimizer, ctx.rank)
        start, data_tokens, flops, wall_offset = state["step"], state["data_tokens"], state["flops"], state["wall_time"]
        skipped = state.get("skipped_steps", 0)
        if ctx.is_main:
            print(f"resumed from {path} (step {start}, phase {1 if start < switch else 2})")
    log = MetricsLog(run, cfg.log.tensorboard, resume_step=start if found is not None else None, enabled=ctx.is_main)
    t0 = time.perf_counter()

    def elapsed() -> float:
        return wall_offset + time.perf_counter() - t0

    def save(step: int) -> None:
        state = {"phase": 1 if step <= switch and switch > 0 else 2, "data_tokens": data_tokens, "flops": flops,
                 "wall_time": elapsed(), "at_switch": step == switch and switch > 0,
                 "epochs": reader.epochs(step), "skipped_steps": skipped}
        if ctx.distributed:
            ckpt.save_sharded_checkpoint(ckpt_root, step, model, optimizer, state, ctx)
        else:
            ckpt.save_checkpoint(ckpt_root, step, model, optimizer, state)
        if ctx.is_main:
            ckpt.prune_checkpoints(ckpt_root, cfg.train.keep_checkpoints)

    def evaluate(step: int) -> float:
        v = validation_loss(parts, val, cfg.train.eval_batch_size, device, autocast, run_model, ctx)
        log.write({"step": step, "phase": 1 if step <= switch and switch > 0 else 2, "val_loss": v, "data_tokens": data_tokens,
                   "flops": flops, "wall_time": elapsed()})
        return v

    if start == 0:
        evaluate(0)
    progress = Progress(N, start, cfg.log.progress and ctx.is_main)
    last_val = math.nan
    try:
        for step in range(start, N):
            phase = 1 if step < switch else 2
            if step == switch and switch > 0 and cfg.tst.reset_optimizer:
                optimizer.state.clear()
            if step == switch and switch > 0 and cfg.tst.reinit_embeddings:
                reinitialise_embeddings(parts, optimizer, cfg)
            lr = lr_at(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_start = time.perf_counter()
            loss_sum = 0.0
            groups = schedule.groups(step)
            # This process reads sequences [first, first + accum * micro) of the step's global batch.
            micro = sum(g.count for g in groups) // ctx.world_size // accum
            first = ctx.rank * micro * accum
            for k in range(accum):
                pieces = [(size, w.to(device, non_blocking=True)) for size, w in reader.pieces(step, first + k * micro, micro)]
                ctx.grad_sync(k == accum - 1)  # reduce gradients across processes once, after the last micro-batch
                with autocast():
                    loss = run_model(step_loss, parts, pieces, cfg)
                (loss / accum).backward()
                loss_sum += loss.item() / accum
            loss_sum = ctx.mean(loss_sum)  # every process holds the same global loss, so all agree below
            grad_norm, problem = math.nan, None
            if not math.isfinite(loss_sum):
                problem = f"non-finite loss ({loss_sum}) at step {step + 1} (phase {phase})"
            else:
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
                grad_norm = distributed.full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
                if not math.isfinite(grad_norm):
                    where = next((n for n in ctx.gather(first_non_finite_grad(model)) if n), "an unknown parameter")
                    problem = f"non-finite gradient at step {step + 1} (phase {phase}) in {where}"
            if problem is None:
                optimizer.step()
            elif cfg.train.skip_nonfinite:
                skipped += 1
                if ctx.is_main:
                    print(f"skipping step {step + 1}: {problem} (train.skip_nonfinite); no update, {skipped} skipped so far")
            else:
                raise TrainingError(
                    f"{problem}; the last good checkpoint under {ckpt_root} is kept. Lower optim.lr, raise "
                    "optim.warmup_steps or check the data; train.skip_nonfinite=true skips such steps instead"
                )
            optimizer.zero_grad(set_to_none=True)
            read = schedule.tokens_read(step)  # data tokens this step consumed as inputs
            data_tokens += read
            work = step_flops(groups)
            flops += work
            dt = time.perf_counter() - step_start
            done = step + 1
            progress.update(phase, loss_sum, read / dt)
            if done % cfg.log.every == 0 or done in (switch, switch + 1, N):
                row = {"step": done, "phase": phase, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                       "data_tokens": data_tokens, "flops": flops, "wall_time": elapsed(),
                       "tokens_per_s": read / dt, "positions_per_s": B * L / dt, "epoch": reader.epochs(done),
                       "skipped_steps": skipped, "bag_size": max(g.bag_size for g in groups),
                       "bag_share": bag_share(cfg, step)}
                if peak > 0:
                    row["mfu"] = work / dt / peak
                log.write(row)
            if done == switch or (cfg.train.eval_every and done % cfg.train.eval_every == 0) or done == N:
                last_val = evaluate(done)
            if done == switch or done == N or (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0):
                save(done)
            maybe_die("step", done, ctx.rank)
    finally:
        progress.close()
        log.close()

    if math.isnan(last_val):  # resumed from the final checkpoint: nothing left to run
        last_val = validation_loss(parts, val, cfg.train.eval_batch_size, device, autocast, run_model, ctx)
    weights = ckpt.full_model_state_dict(model) if ctx.distributed else None  # gathered from every process
    summary = RunSummary(run, last_val, N, switch, data_tokens, flops, elapsed())
    if ctx.is_main:
        ckpt.export_hf(model, run / "final", data.path / "tokenizer.json", data.manifest.get("eos_token"), weights)
        (run / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
