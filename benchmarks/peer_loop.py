"""Benchmark 5: our trainer in baseline mode against a minimal plain-PyTorch next-token loop.

The peer is the nanoGPT pattern: random windows from the memory-mapped tokens, the model's
logits and ``F.cross_entropy``, AdamW, grad clipping, nothing else. Same model, same data, same
batch. Each side runs ``--steps`` steps, twice, alternating; per-step times (data read, forward,
backward, clip, optimizer step) are compared by their medians.

    python benchmarks/peer_loop.py --preset cpu-small --data data/corpus
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from _common import machine, sync
from tstrain.config import load_config
from tstrain.data import TokenData
from tstrain.metrics import read_jsonl
from tstrain.models import build_model
from tstrain.train import make_optimizer, resolve_device, train


def peer_step_times(cfg, data: TokenData, steps: int, device) -> list[float]:
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len).to(device)
    opt = make_optimizer(model, cfg, device)
    B, L = cfg.train.batch_size, cfg.train.seq_len
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps):
        sync()
        t = time.perf_counter()
        starts = rng.integers(0, len(data.train) - L - 1, B)
        x = torch.from_numpy(np.stack([data.train[i : i + L + 1] for i in starts]).astype(np.int64)).to(device)
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t)
    return times


def ours_step_times(cfg, steps: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = load_config(overrides={**{f"{sec}.{k}": v for sec, vals in cfg.to_dict().items()
                                            for k, v in vals.items()},
                                         "train.steps": steps, "tst.ratio": 0.0, "log.every": 1, "log.progress": False,
                                         "train.eval_every": 0, "data.val_windows": 1})
        train(run_cfg, tmp)
        rows = [r for r in read_jsonl(f"{tmp}/metrics.jsonl") if "loss" in r]
    B, L = cfg.train.batch_size, cfg.train.seq_len
    return [B * L / r["tokens_per_s"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--data", default="data/corpus")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    data = TokenData(args.data)
    cfg = load_config(args.preset, overrides={"data.path": args.data})
    cfg.model.vocab_size = -(-data.vocab_size // cfg.model.pad_vocab_multiple) * cfg.model.pad_vocab_multiple
    cfg.model.max_position_embeddings = cfg.train.seq_len
    device = resolve_device(cfg)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    ours, peer = [], []
    for _ in range(args.rounds):
        ours += ours_step_times(cfg, args.steps)[2:]  # the first steps warm up
        peer += peer_step_times(cfg, data, args.steps, device)[2:]
    B, L = cfg.train.batch_size, cfg.train.seq_len
    mo, mp = statistics.median(ours), statistics.median(peer)
    print(f"# baseline tokens/s: tstrain vs a minimal next-token loop, preset {args.preset} "
          f"(B={B}, L={L}); {machine()}")
    print(f"# medians over {len(ours)} and {len(peer)} steps, {args.rounds} alternating rounds")
    print("| loop | step time (s) | tokens/s | vs peer |")
    print("| --- | --- | --- | --- |")
    print(f"| tstrain train, ratio 0 | {mo:.4f} | {B * L / mo:,.0f} | {mp / mo:.3f}x |")
    print(f"| minimal plain-PyTorch loop | {mp:.4f} | {B * L / mp:,.0f} | 1.000x |")


if __name__ == "__main__":
    main()
