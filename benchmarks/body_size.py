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

With ``--plot FILE`` it also draws each arm's two gaps against the body share.

    python benchmarks/body_size.py STEPS WARMUP ROOT:SIZE [ROOT:SIZE ...] [--plot FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lr_warmup import best_setting, load_runs, mean_final, seed_gaps, step_value
from tstrain.config import padded_vocab
from tstrain.models import model_info
from tstrain.studies.report_text import interval_text, value_text
from tstrain.studies.statistics import GapReading


def body_and_rest(cfg) -> tuple[int, int]:
    """Return (body, embedding and head) parameter counts of a run's model."""
    info = model_info(cfg.model, padded_vocab(cfg.model.vocab_size, cfg.model.pad_vocab_multiple), cfg.train.seq_len)
    p = info["parameters"]
    head = 0 if info["tied_embeddings"] else info["vocab_size"] * info["hidden_size"]
    return p["total"] - p["embedding"] - head, p["embedding"] + head


def gap_text(found: tuple[list[str], list[float], GapReading | None]) -> str:
    """Return ``seed_gaps``' result as text: the gap on each shared seed, with its reading and interval."""
    seeds, gaps, g = found
    if not seeds:
        return "n/a"
    interval = "" if g.interval is None else f"; {interval_text(g.interval, '+.3f')}"
    return f"{', '.join(f'{x:+.3f}' for x in gaps)} ({g.reading}{interval})"


def model_points(root: Path, size: str, steps: int, warmup: int) -> list[dict[str, Any]]:
    """Return one record per TST arm of one model's grid at ``warmup``: its shape, the best LRs and both gaps."""
    cells = {k: c for k, c in load_runs(root, size, steps).items() if k[1] == warmup}
    if not cells:
        return []
    best, _ = best_setting(cells, "baseline")
    some = next(runs for runs in cells[best].values() if "baseline" in runs)["baseline"]["cfg"]
    body, rest = body_and_rest(some)
    arms = sorted({n for c in cells.values() for runs in c.values() for n in runs if n != "baseline"}, reverse=True)
    points = []
    for arm in arms:
        own, _ = best_setting(cells, arm)
        protocol, own_gap = seed_gaps(cells[best], cells[best], arm), seed_gaps(cells[best], cells[own], arm)
        points.append({"size": size, "shape": f"hidden {some.model.hidden_size}, {some.model.num_layers} layers",
                       "body": body, "rest": rest, "tried": sorted(cells), "arm": arm, "best": best, "own": own,
                       "best_final": mean_final(cells[best], "baseline"), "own_final": mean_final(cells[own], arm),
                       "protocol": protocol, "own_gap": own_gap,
                       "text": (gap_text(protocol), gap_text(own_gap), value_text(step_value(cells[own], arm)))})
    return points


def model_rows(root: Path, size: str, steps: int, warmup: int) -> list[str]:
    """Return one table row per TST arm of one model's grid at ``warmup``."""
    points = model_points(root, size, steps, warmup)
    if not points:
        return [f"| {size} ({root}) | no finished cell | | | | | | |"]
    return [f"| {p['size']}: {p['shape']} | {p['body'] / 1e6:.2f}M / {p['rest'] / 1e6:.2f}M "
            f"({p['body'] / (p['body'] + p['rest']):.0%}) | {', '.join(f'{k[0]:g}' for k in p['tried'])} | "
            f"{p['best'][0]:g}: {p['best_final']:.4f} | {p['arm']} | {p['own'][0]:g}: {p['own_final']:.4f} | "
            f"{' | '.join(p['text'])} |" for p in points]


def plot(points: list[dict[str, Any]], path: Path) -> None:
    """Write each arm's gap against the body share: at the baseline's best LR and each at its own best,
    the mean over seeds with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in sorted({p["arm"] for p in points}, reverse=True):
        mine = sorted((p for p in points if p["arm"] == arm), key=lambda p: p["body"] / (p["body"] + p["rest"]))
        for key, label, style in (("protocol", "at the baseline's best LR", "--"),
                                  ("own_gap", "each at its own best", "-")):
            done = [p for p in mine if p[key][0]]
            x = [100 * p["body"] / (p["body"] + p["rest"]) for p in done]
            mid = [sum(p[key][1]) / len(p[key][1]) for p in done]
            lo = [m - p[key][2].interval[0] for m, p in zip(mid, done)]
            hi = [p[key][2].interval[1] - m for m, p in zip(mid, done)]
            ax.errorbar(x, mid, yerr=[lo, hi], linestyle=style, marker="o", capsize=3, label=f"{arm}, {label}")
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xlabel("share of the parameters in the transformer body (%)")
    ax.set_ylabel("final val loss, TST minus baseline (nats)")
    ax.set_title("Below 0: TST better at equal FLOPs (95% intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    figure = Path(argv.pop(argv.index("--plot") + 1)) if "--plot" in argv[:-1] else None
    argv = [a for a in argv if a != "--plot"]
    if len(argv) < 3 or not (argv[0].isdigit() and argv[1].isdigit()) or any(":" not in a for a in argv[2:]):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    steps, warmup = int(argv[0]), int(argv[1])
    models = [(Path(a.rsplit(":", 1)[0]), a.rsplit(":", 1)[1]) for a in argv[2:]]
    print(report(steps, warmup, models), end="")
    if figure is not None:
        plot([p for root, size in models for p in model_points(root, size, steps, warmup)], figure)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
