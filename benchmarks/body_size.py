"""Read the gap against the size of the transformer body, each model tuned over its own LR grid.

Each model is a grid of ``tstrain scale`` cells in the layout ``benchmarks/lr_warmup.py`` reads
(``ROOT/lr{LR}-w{WARMUP}/SIZE/steps{STEPS}/seed*/{baseline,tst-*}``), one model shape per
``ROOT:SIZE``, all at the same run length, warmup, batch and data (cells at other warmups are
left out). For each model and TST arm it prints
the parameters in the body (everything but the embedding and the LM head) and outside it, the
best LR of the baseline and of the arm, the gap under the paper's protocol (the arm at the
baseline's best LR) and with each at its own best, and the phase-1 step value at the arm's best
LR (against the baseline of that LR). Gaps are read against the evaluation noise of the
baseline's fitted curve and, with two seeds, their spread. Nothing is trained.

    python benchmarks/body_size.py STEPS WARMUP ROOT:SIZE [ROOT:SIZE ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lr_warmup import load_runs, mean_final, seed_gaps, step_value
from tstrain.config import padded_vocab
from tstrain.models import model_info


def body_and_rest(cfg) -> tuple[int, int]:
    """Return (body, embedding and head) parameter counts of a run's model."""
    info = model_info(cfg.model, padded_vocab(cfg.model.vocab_size, cfg.model.pad_vocab_multiple), cfg.train.seq_len)
    p = info["parameters"]
    head = 0 if info["tied_embeddings"] else info["vocab_size"] * info["hidden_size"]
    return p["total"] - p["embedding"] - head, p["embedding"] + head


def gap_text(base_cell: dict[str, Any], arm_cell: dict[str, Any], arm: str) -> str:
    """Return ``arm`` minus the baseline, seed by seed where both have the seed, with interval and reading."""
    seeds, gaps, g = seed_gaps(base_cell, arm_cell, arm)
    if not seeds:
        return "n/a"
    interval = "" if g["interval"] is None else f"; {g['interval'][0]:+.3f} to {g['interval'][1]:+.3f}"
    return f"{', '.join(f'{x:+.3f}' for x in gaps)} ({g['reading']}{interval})"


def step_value_text(cell: dict[str, Any], arm: str) -> str:
    """Return the phase-1 step value of ``arm`` against the baseline of the same cell, over its seeds."""
    v = step_value(cell, arm)
    if v["value"] is None:
        return "n/a"
    lo, hi = ("unbounded" if x is None else f"{x:.2f}" for x in v["interval"])
    return f"{v['value']:.2f} ({lo} to {hi}; {v['reading']})"


def model_rows(root: Path, size: str, steps: int, warmup: int) -> list[str]:
    """Return one table row per TST arm of one model's grid at ``warmup``."""
    cells = {k: c for k, c in load_runs(root, size, steps).items() if k[1] == warmup}
    if not cells:
        return [f"| {size} ({root}) | no finished cell | | | | | | |"]
    best = min(cells, key=lambda k: mean_final(cells[k], "baseline"))
    some = next(iter(cells[best].values()))["baseline"]["cfg"]
    body, rest = body_and_rest(some)
    shape = f"hidden {some.model.hidden_size}, {some.model.num_layers} layers"
    arms = sorted({n for c in cells.values() for runs in c.values() for n in runs if n != "baseline"}, reverse=True)
    tried = ", ".join(f"{k[0]:g}" for k in sorted(cells))
    rows = []
    for arm in arms:
        own = min((k for k in cells if mean_final(cells[k], arm) is not None), key=lambda k: mean_final(cells[k], arm))
        rows.append(
            f"| {size}: {shape} | {body / 1e6:.2f}M / {rest / 1e6:.2f}M ({body / (body + rest):.0%}) | {tried} | "
            f"{best[0]:g}: {mean_final(cells[best], 'baseline'):.4f} | {arm} | "
            f"{own[0]:g}: {mean_final(cells[own], arm):.4f} | {gap_text(cells[best], cells[best], arm)} | "
            f"{gap_text(cells[best], cells[own], arm)} | {step_value_text(cells[own], arm)} |")
    return rows


def report(steps: int, warmup: int, models: list[tuple[Path, str]]) -> str:
    lines = [f"The gap against the body at {steps} steps, warmup {warmup} (gaps: TST minus the baseline's final "
             "val loss, seeds listed, 95% interval):", "",
             "| model | body / embedding and head (body share) | LRs tried | baseline's best LR: final | arm | "
             "arm's best LR: final | gap at the baseline's best LR | gap, each at its best | "
             "phase-1 step value at the arm's best LR |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for root, size in models:
        lines += model_rows(root, size, steps, warmup)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not (argv[0].isdigit() and argv[1].isdigit()) or any(":" not in a for a in argv[2:]):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    models = [(Path(a.rsplit(":", 1)[0]), a.rsplit(":", 1)[1]) for a in argv[2:]]
    print(report(int(argv[0]), int(argv[1]), models), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
