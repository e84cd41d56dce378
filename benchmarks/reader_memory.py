"""The training reader's memory and time on a simulated 1T-token corpus, next to the stored permutation it replaced.

The reader places the corpus's blocks (``L*s`` tokens) by a per-epoch order computed per block
read (``permutation.KeyedPermutation``); the stored permutation it replaced held 8 bytes a block
for each of up to 3 epochs. This builds a ``WindowReader`` over a stand-in for the training
split that has ``len() = --tokens`` and returns zeros when indexed (no token exists anywhere),
reads a few steps' batches in phase 1, at the switch and in later epochs, and reports:

- the reader's own memory: tracemalloc's peak while building the schedule and the reader, and
  while laying out each step (the corpus offsets of its sequences: where the shuffle works);
- the peak of a whole batch read and the batch tensors' own size, whose difference is the
  reader's working memory beyond the batch it returns;
- the process's RSS growth over all of this, and the seconds per layout and per batch read (each
  step's median of 5 calls; the median and the slowest step), in a fresh process per schedule,
  without tracemalloc (which slows allocation).

    python benchmarks/reader_memory.py --tokens 1e12
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tracemalloc

import numpy as np

from _common import machine, timed
from tstrain.config import load_config
from tstrain.data.reader import READER_ORDER, WindowReader
from tstrain.phases import window_schedule

SCHEDULES = {
    "cpu-small (L=128, s=4, B=16)": ("cpu-small", {}),
    "paper-like (L=2048, s=8, B=256)": ("cpu-small", {"train.seq_len": 2048, "tst.bag_size": 8,
                                                      "train.batch_size": 256, "train.steps": 20_000}),
}


class ZeroTokens:
    """A stand-in for a training split of ``n`` tokens: ``len()`` says so, reading gives zeros."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(index), dtype=np.uint16)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def first_step_of_epoch(reader: WindowReader, epoch: int) -> int:
    """Return the first step whose reads lie in epoch ``epoch`` (the steps before it reached its start)."""
    lo, hi = 0, 1
    while reader.epochs(hi) < epoch:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if reader.epochs(mid) < epoch else (lo, mid)
    return lo


def steps_to_read(reader: WindowReader, switch: int) -> list[int]:
    """Return three steps each of phase 1, the switch and epochs 1 and 2."""
    firsts = [0, switch] + [first_step_of_epoch(reader, e) for e in (1, 2)]
    return [t + k for t in firsts for k in range(3)]


def build(preset: str, overrides: dict, tokens: int) -> tuple[WindowReader, int]:
    cfg = load_config(preset, overrides=overrides)
    return WindowReader(ZeroTokens(tokens), window_schedule(cfg), cfg.train.seed), cfg.switch_step


def untraced_pass(preset: str, overrides: dict, tokens: int) -> dict[str, float]:
    """Return the RSS growth (now and peak, bytes) of building the reader and reading the steps, and
    the median seconds of a step's layout and of its batch read."""
    before, peak_before = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reader, switch = build(preset, overrides, tokens)
    steps = steps_to_read(reader, switch)
    layout = [statistics.median(timed(lambda t=t: reader.layout(t)) for _ in range(5)) for t in steps]
    read = [statistics.median(timed(lambda t=t: reader.pieces(t)) for _ in range(5)) for t in steps]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss": rss_bytes() - before, "peak rss": max(0, peak - peak_before), "layout s": layout, "read s": read}


def traced(fn) -> tuple[object, int]:
    """Return ``fn()``'s result and tracemalloc's peak while it ran, in bytes."""
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    out = fn()
    return out, tracemalloc.get_traced_memory()[1] - start


def traced_pass(preset: str, overrides: dict, tokens: int) -> dict[str, float]:
    """Return the reader's tracemalloc peaks (construction, per-step layout, per-step batch read)."""
    tracemalloc.start()
    (reader, switch), built = traced(lambda: build(preset, overrides, tokens))
    steps = steps_to_read(reader, switch)
    layouts = [traced(lambda t=t: reader.layout(t)) for t in steps]
    reads = [traced(lambda t=t: reader.pieces(t)) for t in steps]
    tracemalloc.stop()
    batch = max(sum(w.nbytes for _, w in pieces) for pieces, _ in reads)
    return {"blocks": reader.num_blocks, "block": reader.block_size, "built": built,
            "layout": max(p for _, p in layouts), "read": max(p for _, p in reads), "batch": batch,
            "epochs": sorted({int(reader.epochs(t)) for t in steps}), "steps": steps}


def mb(x: float) -> str:
    return f"{x / 2**20:,.2f} MiB" if x < 2**30 else f"{x / 2**30:,.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=float, default=1e12)
    ap.add_argument("--rss-of", help=argparse.SUPPRESS)  # the child that measures one schedule's RSS
    args = ap.parse_args()
    tokens = int(args.tokens)
    # numpy loads numpy.random and numpy.ma on their first use (about 2 MiB, once per process):
    # not the reader's memory, so a small reader pays it before anything is measured.
    build("cpu-small", {}, 10**6)[0].pieces(0)
    if args.rss_of:
        print(json.dumps(untraced_pass(*SCHEDULES[args.rss_of], tokens)))
        return
    rss = {name: json.loads(subprocess.run([sys.executable, __file__, "--tokens", str(tokens), "--rss-of", name],
                                           check=True, capture_output=True, text=True).stdout)
           for name in SCHEDULES}
    traced_runs = {name: traced_pass(*spec, tokens) for name, spec in SCHEDULES.items()}
    print(f"# the reader on a simulated {tokens:,}-token corpus (stand-in tokens: zeros, no file), "
          f"order {READER_ORDER}; {machine()}")
    names = list(SCHEDULES)
    print("| | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    rows = {
        "blocks x block size (L*s tokens)": lambda r, m: f"{r['blocks']:,} x {r['block']:,}",
        "the stored permutation it replaced (8 bytes a block, per epoch; up to 3 held)":
            lambda r, m: mb(8 * r["blocks"]),
        "steps read (epochs they fall in)": lambda r, m: f"{r['steps']} ({r['epochs']})",
        "tracemalloc peak: schedule + reader built": lambda r, m: mb(r["built"]),
        "tracemalloc peak: one step's layout (the shuffle)": lambda r, m: mb(r["layout"]),
        "tracemalloc peak: one step's batch read / its batch tensors":
            lambda r, m: f"{mb(r['read'])} / {mb(r['batch'])}",
        "RSS growth after all reads / peak RSS growth": lambda r, m: f"{mb(m['rss'])} / {mb(m['peak rss'])}",
        "ms per layout / per batch read (median step; slowest step)": lambda r, m: (
            f"{1e3 * statistics.median(m['layout s']):.2f} / {1e3 * statistics.median(m['read s']):.2f}; "
            f"{1e3 * max(m['layout s']):.2f} / {1e3 * max(m['read s']):.2f}"),
    }
    for label, cell in rows.items():
        print(f"| {label} | " + " | ".join(cell(traced_runs[n], rss[n]) for n in names) + " |")


if __name__ == "__main__":
    main()
