"""Benchmark 4: model FLOPs utilisation, and the FLOPs formula checked against PyTorch's counter.

FLOPs per training step = (6 x matmul parameters + 12 x layers x d x L) x B x L, counted on the
positions the transformer sees (see ``tstrain.models.flops_per_position``). The peak is measured
on the same machine with a large matmul (float32 on CPU, bf16 on GPU). MFU = formula FLOPs per
second of a measured training step over that peak.

    python benchmarks/mfu.py --preset cpu-small
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import interleaved, machine, phase_loss, training_setup
from tstrain.config import load_config
from tstrain.models import flops_per_position
from tstrain.train.metrics import PEAK_BF16_FLOPS


def measured_peak(device: torch.device, n: int) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = interleaved({"mm": lambda: a @ b}, 5)["mm"]
    return 2 * n**3 / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--bag-size", type=int, default=4)
    ap.add_argument("--matmul-size", type=int, default=0, help="peak matmul size (default 2048 CPU, 8192 GPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], help="config overrides SECTION.FIELD=VALUE")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = load_config(args.preset, overrides={**overrides, "tst.bag_size": args.bag_size})
    model, parts, opt, device, autocast = training_setup(cfg, args.vocab)
    B, L, s = cfg.train.batch_size, cfg.train.seq_len, args.bag_size
    formula = flops_per_position(model, L) * B * L
    windows = {1: torch.randint(0, args.vocab, (B, L + 1), device=device),
               s: torch.randint(0, args.vocab, (B, (L + 1) * s), device=device)}

    def step(phase):
        def go():
            with autocast():
                loss = phase_loss(parts, windows[1 if phase == 2 else s], phase, cfg)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return go

    counted, by_op = {}, {}
    for phase in (2, 1):
        with FlopCounterMode(display=False) as counter:
            with autocast():
                loss = phase_loss(parts, windows[1 if phase == 2 else s], phase, cfg)
            loss.backward()
        opt.zero_grad(set_to_none=True)
        counted[phase] = counter.get_total_flops()
        by_op[phase] = {str(k).split(".")[-1] if "." in str(k) else str(k): v
                        for k, v in counter.get_flop_counts()["Global"].items()}
    med = interleaved({2: step(2), 1: step(1)}, args.repeats)
    n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = measured_peak(device, n)
    print(f"# MFU, preset {args.preset} (B={B}, L={L}, vocab {args.vocab}), phase 1 at s={s}; {machine()}")
    c = model.config
    attention = 12.0 * c.num_hidden_layers * c.hidden_size * L * B * L
    print(f"formula FLOPs per step: {formula:.4e} = matmul term (6 x params x positions) {formula - attention:.4e} "
          f"+ attention term (12 x layers x d x L x positions) {attention:.4e}")
    for phase in (2, 1):
        ops = ", ".join(f"{k} {v:.3e}" for k, v in sorted(by_op[phase].items()))
        print(f"FlopCounterMode, phase {phase} step (forward + backward): {counted[phase]:.4e} "
              f"= {counted[phase] / formula:.3f} x formula, "
              f"{counted[phase] / (formula - attention):.3f} x its matmul term; by op: {ops}")
    print(f"measured peak ({n}x{n} {'bf16' if device.type == 'cuda' else 'fp32'} matmul): {peak / 1e9:,.1f} GFLOP/s")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(0)
        spec = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if spec:
            print(f"datasheet bf16 dense peak: {spec / 1e12:.0f} TFLOP/s")
    for phase in (2, 1):
        print(f"phase {phase} step: {med[phase] * 1e3:.1f} ms, {formula / med[phase] / 1e9:,.1f} GFLOP/s, "
              f"MFU {formula / med[phase] / peak:.1%} of the measured peak")


if __name__ == "__main__":
    main()
