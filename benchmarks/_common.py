"""Shared set-up for the benchmark scripts: machine facts and timing helpers."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time

import torch


def machine() -> str:
    """Return a one-line description of where the figures were measured."""
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads")
    return f"{dev}; torch {torch.__version__}; {datetime.date.today().isoformat()}"


def require_data(path: str, script: str) -> None:
    """Stop with one line naming the problem and the fix (exit code 2), not a traceback, unless ``path`` is a
    prepared data dir: before any figure is measured."""
    from tstrain.data.tokens import TokenData
    from tstrain.errors import TstrainError

    try:
        TokenData(path)
    except TstrainError as e:
        print(f"{script}: error: {e}; the default, data/corpus, comes from `make data/corpus/manifest.json`",
              file=sys.stderr)
        sys.exit(2)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Return the seconds one call of ``fn`` takes (device synchronised)."""
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Return the median seconds of each function, timed A B C A B C ... so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def training_setup(cfg, vocab: int):
    """Return ``(model, parts, optimizer, device, autocast)`` for timing training steps of ``cfg``."""
    from tstrain.model_parts import CausalLMParts
    from tstrain.models import build_model
    from tstrain.train.device import autocast_for, resolve_device
    from tstrain.train.stepping import make_optimizer

    device = resolve_device(cfg)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab, cfg.train.seq_len).to(device)
    return model, CausalLMParts(model), make_optimizer(model, cfg, device), device, autocast_for(cfg, device)


def phase_loss(parts, window, phase: int, cfg):
    """Return the trainer's loss of a batch of windows: bags of ``tst.bag_size`` (phase 1) or next-token (2)."""
    from tstrain.batches import Piece
    from tstrain.train.loop import tst_loss_of

    size = cfg.tst.bag_size if phase == 1 else 1
    return tst_loss_of(parts, cfg)(Piece(cfg.schedule.group(size, window.shape[0]), window))
