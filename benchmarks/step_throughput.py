"""Benchmark 1: a phase-1 step against a baseline step at the same B and L, interleaved.

A phase-1 step reads s times the text at the same transformer cost, so its data tokens/s over
the baseline's is at most s (the physical limit). Prints one row per bag size.

    python benchmarks/step_throughput.py --preset cpu-small --bag-sizes 2,4,8,16
"""

from __future__ import annotations

import argparse

import torch

from _common import interleaved, machine, phase_loss, training_setup
from tstrain.config import load_config
from tstrain.superposition import window_length


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--bag-sizes", default="2,4,8,16")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--set", action="append", default=[], help="config overrides SECTION.FIELD=VALUE")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = load_config(args.preset, overrides=overrides)
    cfg.model.vocab_size = args.vocab
    model, parts, opt, device, autocast = training_setup(cfg, args.vocab)
    B, L = cfg.train.batch_size, cfg.train.seq_len
    sizes = [int(x) for x in args.bag_sizes.split(",")]

    def step_fn(s: int):
        phase = 1 if s > 1 else 2
        step_cfg = load_config(args.preset, overrides={**overrides, "tst.bag_size": s})
        window = torch.randint(0, args.vocab, (B, window_length(L, s, "both" if s > 1 else None)[1]), device=device)

        def step():
            with autocast():
                loss = phase_loss(parts, window, phase, step_cfg)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    fns = {1: step_fn(1), **{s: step_fn(s) for s in sizes}}
    med = interleaved(fns, args.repeats)
    print(f"# step throughput, preset {args.preset} (B={B}, L={L}, vocab {args.vocab}); {machine()}")
    print(f"# medians of {args.repeats} interleaved steps (forward + backward + AdamW)")
    print("| s | step time (s) | positions/s | data tokens/s | data tokens/s vs baseline | of the limit s |")
    print("| --- | --- | --- | --- | --- | --- |")
    base_tps = B * L / med[1]
    for s, t in med.items():
        tps = B * L * s / t
        print(f"| {s if s > 1 else '1 (baseline)'} | {t:.4f} | {B * L / t:,.0f} | {tps:,.0f} | {tps / base_tps:.2f}x | "
              f"{tps / base_tps / s:.1%} |")


if __name__ == "__main__":
    main()
