"""Benchmark 2: forward + backward time and peak memory of the loss.

Compares, on the same logits: plain next-token CE (``F.cross_entropy``, s = 1); our MCE (one
log-sum-exp per position); the published formulation (``s`` calls of CE on the same logits);
and our fused head + MCE (hidden states and head weight in, chunks of positions, never the
whole logits), both the chunked PyTorch path and the Triton kernel (CUDA; on the CPU only under
``TRITON_INTERPRET=1``, which checks the path and times nothing worth reading). Times are
interleaved medians; peak memory is measured per case in a fresh subprocess (peak RSS, or CUDA
peak allocation, above what the inputs already hold).

    python benchmarks/loss_kernels.py --vocabs 8192,32768,131072 --bag-sizes 4,16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

from _common import interleaved, machine
from tstrain.superposition import (
    IGNORE_INDEX,
    _LinearMultiHotCE,
    _prepared_targets,
    bag_weights,
    multi_hot_cross_entropy,
    reference_multi_hot_cross_entropy,
)

METHODS = ("plain CE", "ours MCE", "published s x CE", "plain head+CE", "ours chunked head+MCE",
           "ours Triton head+MCE", "Liger fused head+CE")
HEAD_METHODS = ("plain head+CE", "ours chunked head+MCE", "ours Triton head+MCE", "Liger fused head+CE")


def liger_available(device: str) -> bool:
    """Return whether the field's fused linear cross entropy (Liger Kernel, Triton) can run here."""
    if device != "cuda":
        return False
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def triton_available(device: str) -> bool:
    """Return whether our Triton kernel runs here: on CUDA, or on the CPU through Triton's interpreter."""
    if device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import tstrain.kernels.triton_mce  # noqa: F401
    except ImportError:
        return False
    return True


def available(method: str, device: str) -> bool:
    return {"Liger fused head+CE": liger_available, "ours Triton head+MCE": triton_available}.get(
        method, lambda _: True)(device)


def make_case(method: str, N: int, V: int, d: int, s: int, device: str, dtype: str = "float32",
              chunk: int = 2048):
    """Return (inputs to keep alive, a function running forward + backward once)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    if method in HEAD_METHODS:
        hidden = torch.randn(N, d, generator=g).to(device, getattr(torch, dtype)).requires_grad_()
        weight = (torch.randn(V, d, generator=g) * 0.02).to(device, getattr(torch, dtype)).requires_grad_()
        targets = torch.randint(0, V, (N, s), generator=g).to(device)
        if method == "Liger fused head+CE":  # next-token CE only (one target per position): the peer
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()
        fused = _LinearMultiHotCE
        if method == "ours Triton head+MCE":
            from tstrain.kernels.triton_mce import TritonLinearMultiHotCE as fused

        def run():
            hidden.grad = weight.grad = None
            if method == "plain head+CE":
                F.cross_entropy(hidden @ weight.t(), targets[:, 0]).backward()
            elif method == "Liger fused head+CE":
                liger(weight, hidden, targets[:, 0]).backward()
            else:  # what linear_multi_hot_cross_entropy runs, one path each
                safe, scales = _prepared_targets(targets, V, "uniform", IGNORE_INDEX, 0.0, hidden.device, False)
                fused.apply(hidden, weight, safe, scales, chunk).backward()

        return (hidden, weight, targets), run
    logits = torch.randn(N, V, generator=g).to(device, getattr(torch, dtype)).requires_grad_()
    targets = torch.randint(0, V, (N, s), generator=g).to(device)
    w = bag_weights("uniform", s)

    def run():
        logits.grad = None
        if method == "plain CE":
            F.cross_entropy(logits, targets[:, 0]).backward()
        elif method == "ours MCE":
            multi_hot_cross_entropy(logits, targets, w).backward()
        else:
            reference_multi_hot_cross_entropy(logits, targets, w).backward()

    return (logits, targets), run


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory_child(method: str, N: int, V: int, d: int, s: int, device: str, dtype: str, chunk: int) -> None:
    """Print the peak extra bytes of one forward + backward (run in a fresh process)."""
    keep, run = make_case(method, N, V, d, s, device, dtype, chunk)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        print(json.dumps({"peak": torch.cuda.max_memory_allocated() - base}))
    else:
        reset_peak_rss()
        base = rss_bytes()
        run()
        print(json.dumps({"peak": max(0, peak_rss_bytes() - base)}))


def peak_memory(method, N, V, d, s, device, dtype, chunk) -> int | str:
    """Return the peak extra bytes of one case measured in a fresh process, or why it failed."""
    done = subprocess.run([sys.executable, __file__, "--child",
                           json.dumps([method, N, V, d, s, device, dtype, chunk])],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["no output"])[-1][:120]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak"]


def memory_cells(peak: int | str, plain: int | str) -> str:
    if isinstance(peak, str):
        return f"{peak} | "
    return f"{peak / 2**20:.0f} | " + (f"{peak / max(plain, 1):.2f}x" if isinstance(plain, int) else "")


def estimated_bytes(method: str, N: int, V: int, s: int) -> int:
    """Return a rough upper bound on one case's memory: its inputs plus the float32 (N, V) buffers it keeps."""
    buffers = {"plain CE": 3, "ours MCE": 3, "published s x CE": s + 2, "plain head+CE": 3, "ours chunked head+MCE": 1,
               "ours Triton head+MCE": 1, "Liger fused head+CE": 1}
    return buffers[method] * N * V * 4


def ram_bytes() -> int:
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("MemTotal")).split()[1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocabs", default="8192,32768,131072")
    ap.add_argument("--bag-sizes", default="4,16")
    ap.add_argument("--positions", type=int, default=2048, help="N = B * L positions")
    ap.add_argument("--hidden", type=int, default=576, help="d, for the fused head + MCE")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="dtype of the logits, hidden states and head")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated rows to run ('plain CE' always runs)")
    ap.add_argument("--chunk-size", type=int, default=2048,
                    help="positions per chunk of our fused head + MCE (train.loss_chunk_size's default)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        peak_memory_child(*json.loads(args.child))
        return
    N, d = args.positions, args.hidden
    wanted = [m for m in METHODS if m in args.methods.split(",") or m == "plain CE"]
    print(f"# loss forward + backward, N={N} positions, fused head d={d}, {args.dtype} inputs, "
          f"our fused chunks of {args.chunk_size} positions; {machine()}")
    print(f"# time: median of {args.repeats} interleaved runs; memory: peak above the inputs, fresh process per case")
    print("# the head rows (plain head+CE, ours chunked and Triton head+MCE, Liger) include the head matmuls "
          "(N x d x V); compare them with each other")
    print("| V | s | method | time (ms) | vs plain CE | peak extra memory (MiB) | vs plain CE |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for V in (int(v) for v in args.vocabs.split(",")):
        for s in (int(x) for x in args.bag_sizes.split(",")):
            # All cases stay alive while interleaved: leave out one that cannot fit beside the others.
            budget = 0.6 * (torch.cuda.get_device_properties(0).total_memory if device == "cuda" else ram_bytes())
            fits = [m for m in wanted
                    if sum(estimated_bytes(x, N, V, s) for x in METHODS if x == m or x == "plain CE") < budget
                    and available(m, device)]
            methods = [m for m in wanted if m in fits]
            cases = {m: make_case(m, N, V, d, s, device, args.dtype, args.chunk_size) for m in methods}
            med = interleaved({m: c[1] for m, c in cases.items()}, args.repeats, warmup=1)
            del cases
            if device == "cuda":  # give the cached blocks back: the memory children share the GPU
                torch.cuda.empty_cache()
            mem = {m: peak_memory(m, N, V, d, s, device, args.dtype, args.chunk_size) for m in methods}
            for m in wanted:
                if not available(m, device):
                    needs = "liger-kernel" if m.startswith("Liger") else "triton (or TRITON_INTERPRET=1)"
                    print(f"| {V} | {s} | {m} | not run: needs CUDA and {needs} | | | |", flush=True)
                    continue
                if m not in methods:
                    print(f"| {V} | {s} | {m} | not run: keeps ~{estimated_bytes(m, N, V, s) / 2**30:.0f} GiB "
                          f"of float32 (N, V) buffers, over this machine's budget | | | |", flush=True)
                    continue
                print(f"| {V} | {s} | {m} | {med[m] * 1e3:.1f} | {med[m] / med['plain CE']:.2f}x | "
                      f"{memory_cells(mem[m], mem['plain CE'])} |", flush=True)


if __name__ == "__main__":
    main()
