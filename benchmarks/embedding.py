"""Benchmark 3: our bag embedding (one gather, float32 mean) against the listing's ``s``
separate lookups summed in float32, forward + backward, interleaved medians.

    python benchmarks/embedding.py --vocab 8192 --dim 576 --bag-sizes 4,16
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _common import interleaved, machine
from tstrain.superposition import bag_embeddings


def separate_lookups(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The published formulation: s lookups, summed in float32, divided by s."""
    s = ids.shape[-1]
    total = torch.zeros(*ids.shape[:-1], weight.shape[1], dtype=torch.float32, device=weight.device)
    for i in range(s):
        total = total + F.embedding(ids[..., i], weight).float()
    return (total / s).to(weight.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--positions", type=int, default=2048)
    ap.add_argument("--bag-sizes", default="4,16")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    weight = (torch.randn(args.vocab, args.dim) * 0.02).to(device, dtype).requires_grad_()
    print(f"# bag embedding forward + backward, V={args.vocab}, d={args.dim}, {args.positions} positions, "
          f"{args.dtype}; {machine()}")
    print("| s | ours (ms) | s lookups (ms) | ours / lookups | max abs difference |")
    print("| --- | --- | --- | --- | --- |")
    for s in (int(x) for x in args.bag_sizes.split(",")):
        ids = torch.randint(0, args.vocab, (1, args.positions, s), device=device)
        grad = torch.randn(1, args.positions, args.dim, device=device, dtype=dtype)

        def run(fn, ids=ids, grad=grad):
            def go():
                weight.grad = None
                fn(weight, ids).backward(grad)
            return go

        med = interleaved({"ours": run(bag_embeddings), "lookups": run(separate_lookups)}, args.repeats)
        diff = (bag_embeddings(weight, ids) - separate_lookups(weight, ids)).abs().max().item()
        print(f"| {s} | {med['ours'] * 1e3:.2f} | {med['lookups'] * 1e3:.2f} | "
              f"{med['ours'] / med['lookups']:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
