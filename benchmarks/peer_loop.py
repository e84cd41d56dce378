"""Benchmark 5: our trainer in baseline mode against a minimal plain-PyTorch next-token loop.

The peer is the nanoGPT pattern: random windows from the memory-mapped tokens, the model's
logits and ``F.cross_entropy``, AdamW, grad clipping, nothing else. Same model, same data, same
batch. Each side runs ``--steps`` steps, twice, alternating; per-step times (data read, forward,
backward, clip, optimizer step) are compared by their medians.

    python benchmarks/peer_loop.py --preset cpu-small --data data/corpus

``--gpu`` (see ``gpu_main``): the field's fast loop on one GPU against tstrain's phase-2 and phase-1
steps, on random token windows, with MFU, ``train.loss_chunk_size`` and activation checkpointing.
``DRY_RUN=1`` runs that path on the CPU at tiny sizes (its figures mean nothing).

    python benchmarks/peer_loop.py --gpu --preset smollm2-135m
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from _common import interleaved, machine, sync, training_setup
from tstrain.config import load_config
from tstrain.data.tokens import TokenData
from tstrain.models import build_model
from tstrain.train.device import resolve_device
from tstrain.train.loop import train
from tstrain.train.metrics import read_jsonl
from tstrain.train.stepping import make_optimizer


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
    ap.add_argument("--gpu", action="store_true", help="the GPU comparison (DRY_RUN=1: its path on the CPU, tiny)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="--gpu: micro-batch (0: the largest of 32, 16, 8 that fits)")
    ap.add_argument("--repeats", type=int, default=5, help="--gpu: interleaved timings per step kind")
    args = ap.parse_args()
    if args.gpu:
        gpu_main(args.preset, args.batch_size, args.repeats)
        return
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


# ----------------------------------------------------------------------------------------------
# --gpu: the field's fast loop (torch.compile + Liger's fused linear CE) against tstrain's steps
# ----------------------------------------------------------------------------------------------

DRY = os.environ.get("DRY_RUN") == "1"


def liger_loss():
    """Return ``(Liger Kernel's fused linear CE or None, the peer's name)``; the loss is
    ``loss(weight, hidden (N, d), targets (N,))``."""
    if DRY:
        return None, "peer: compiled loop + plain CE (dry run: Liger needs CUDA)"
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None, "peer: compiled loop + plain CE (liger-kernel not installed: no fused loss)"
    return LigerFusedLinearCrossEntropyLoss(), "peer: compiled loop + Liger fused linear CE"


def peer_step(model, opt, cfg, autocast, B: int, liger):
    """Return one step of the peer: the model's body compiled whole, Liger's fused linear CE on its last
    hidden states (else the head's logits and ``F.cross_entropy``), clipping, AdamW."""
    from tstrain.model_parts import CausalLMParts

    parts = CausalLMParts(model)
    body = torch.compile(parts.body)
    L, device = cfg.train.seq_len, parts.head.weight.device
    x = torch.randint(0, cfg.model.vocab_size, (B, L + 1), device=device)

    def step():
        with autocast():
            hidden = body(input_ids=x[:, :-1], use_cache=False).last_hidden_state.flatten(0, 1)
            if liger is not None:
                loss = liger(parts.head.weight, hidden, x[:, 1:].flatten())
            else:
                loss = torch.nn.functional.cross_entropy(parts.head(hidden).float(), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ours_step(model, parts, opt, cfg, autocast, B: int, s: int):
    """Return one tstrain step (phase 2 when ``s`` is 1, else phase 1 with bags of ``s``): the trainer's loss
    (fused head + MCE), clipping, AdamW."""
    from _common import phase_loss
    from tstrain.superposition import window_length

    L, device = cfg.train.seq_len, parts.head.weight.device
    window = torch.randint(0, cfg.model.vocab_size, (B, window_length(L, s, "both" if s > 1 else None)[1]),
                           device=device)
    step_cfg = cfg.with_values({"tst.bag_size": max(s, 2)})

    def step():
        with autocast():
            loss = phase_loss(parts, window, 1 if s > 1 else 2, step_cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def peak_bytes(step) -> float:
    """Return the peak bytes allocated during one call of ``step`` (NaN off CUDA)."""
    if not torch.cuda.is_available():
        step()
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def matmul_peak(n: int) -> float:
    """Return the measured bf16 matmul FLOP/s of an ``n`` x ``n`` product (float32 on the CPU)."""
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / interleaved({"mm": lambda: a @ b}, 5)["mm"]


def gpu_setup(preset: str, batch: int):
    """Return ``(cfg, ours (model, parts, opt, autocast), peer (model, opt), B)``: two copies of the preset's
    model, ours with each decoder layer compiled (as ``train.compile``), at the largest batch that fits."""
    from tstrain.train.activation_checkpointing import decoder_layers

    shape = {"train.seq_len": 32, "model.vocab_size": 512} if DRY else {}
    cfg = load_config(preset, overrides={"train.device": "cpu" if DRY else "cuda", "train.precision": "bf16",
                                         "train.fused_loss": "on", **shape})
    model, parts, opt, _, autocast = training_setup(cfg, cfg.model.vocab_size)
    for layer in decoder_layers(model):
        layer.compile()
    peer_model, _, peer_opt, _, _ = training_setup(cfg, cfg.model.vocab_size)
    candidates = [batch] if batch else ([2] if DRY else [32, 16, 8])
    for B in candidates:
        try:
            ours_step(model, parts, opt, cfg, autocast, B, 8)()
            return cfg, (model, parts, opt, autocast), (peer_model, peer_opt), B
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    raise RuntimeError(f"no micro-batch of {candidates} fits")


def gpu_main(preset: str, batch: int, repeats: int) -> None:
    """Print the peer vs tstrain table, the loss chunk sizes and activation checkpointing."""
    from tstrain.models import flops_per_position
    from tstrain.train.activation_checkpointing import checkpoint_activations

    preset = "tiny-llama" if DRY else preset
    cfg, (model, parts, opt, autocast), (peer_model, peer_opt), B = gpu_setup(preset, batch)
    L, (liger, peer_name) = cfg.train.seq_len, liger_loss()
    steps = {peer_name: peer_step(peer_model, peer_opt, cfg, autocast, B, liger)}
    steps.update({("tstrain phase 2" if s == 1 else f"tstrain phase 1, s={s}"):
                  ours_step(model, parts, opt, cfg, autocast, B, s) for s in (1, 4, 8)})
    med = interleaved(steps, repeats)
    peaks = {name: peak_bytes(step) for name, step in steps.items()}
    flops, peak = flops_per_position(model, L) * B * L, matmul_peak(256 if DRY else 8192)
    print(f"# peer loop on one GPU: preset {preset} (V={cfg.model.vocab_size}, L={L}), micro-batch {B}, bf16 "
          f"autocast, random tokens, AdamW + clipping; median of {repeats} interleaved steps; {machine()}")
    print(f"# measured bf16 matmul peak {peak / 1e12:.1f} TFLOP/s; MFU counts the model's FLOPs at the L positions")
    print("| step | time (ms) | positions/s | data tokens/s | vs peer | MFU | peak memory (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, t in med.items():
        s = int(name.rsplit("=", 1)[1]) if "s=" in name else 1
        print(f"| {name} | {t * 1e3:.1f} | {B * L / t:,.0f} | {B * L * s / t:,.0f} | {t / med[peer_name]:.3f}x | "
              f"{flops / t / peak:.1%} | {peaks[name] / 2**30:.2f} |")
    chunks = (8, 16, 64) if DRY else (1024, 2048, 4096, 8192)
    chunk_steps = {c: ours_step(model, parts, opt, cfg.with_values({"train.loss_chunk_size": c}), autocast, B, 1)
                   for c in chunks}
    chunk_med = interleaved(chunk_steps, repeats)
    print(f"\n# tstrain phase 2 by train.loss_chunk_size (default {cfg.train.loss_chunk_size})")
    print("| loss_chunk_size | time (ms) | peak memory (GiB) |\n| --- | --- | --- |")
    for c, t in chunk_med.items():
        print(f"| {c} | {t * 1e3:.1f} | {peak_bytes(chunk_steps[c]) / 2**30:.2f} |")
    checkpoint_activations(model)  # the same steps, each layer recomputing its activations in the backward
    ckpt = {s: ours_step(model, parts, opt, cfg, autocast, B, s) for s in (1, 4)}
    ckpt_med = interleaved(ckpt, repeats)
    print("\n# activation checkpointing (every decoder layer), against the rows above")
    print("| step | time (ms) | vs without | peak memory (GiB) | vs without |\n| --- | --- | --- | --- | --- |")
    for s, t in ckpt_med.items():
        name = "tstrain phase 2" if s == 1 else f"tstrain phase 1, s={s}"
        mem = peak_bytes(ckpt[s])
        print(f"| {name} | {t * 1e3:.1f} | {t / med[name]:.3f}x | {mem / 2**30:.2f} | {mem / peaks[name]:.3f}x |")


if __name__ == "__main__":
    main()
