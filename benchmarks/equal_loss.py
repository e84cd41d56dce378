"""Read the equal-loss speedup of one ``tstrain compare --equal-loss`` command over its seeds.

Each DIR is the comparison dir of one seed (the same command with ``--seed K``). Prints markdown:
each seed's ladder and reading, then the speedup over the seeds (``ladder.over_seeds``: the mean final
val losses, the seed spread added to the noise). With ``--plot PATH`` it also draws the headline figure:
every run's val loss against training FLOPs, the ladder's mean final values, TST's and the equal-loss
point with its interval. Nothing is trained.

    python benchmarks/equal_loss.py DIR [DIR ...] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _figures import new_figure, save_figure
from tstrain.config import load_config
from tstrain.studies.ladder import non_increasing, over_seeds
from tstrain.studies.runs import decay_start, val_rows


def read(dirs: list[str]) -> list[dict]:
    """Return each dir's comparison.json; refuse one without an equal-loss reading."""
    results = []
    for d in dirs:
        result = json.loads((Path(d) / "comparison.json").read_text())
        if "equal_loss" not in result:
            sys.exit(f"{d}/comparison.json holds no equal-loss reading: run compare with --equal-loss")
        results.append(result)
    return results


def print_seed(d: str, result: dict) -> None:
    eq, data = result["equal_loss"], result.get("data") or {}
    print(f"## {d}\n\nCorpus hash {data.get('corpus_sha256')}. Noise of one final value "
          f"{eq['noise']:.4f} nats ({eq['noise_from']}).\n")
    print("| run | steps | compute (x TST's) | final val loss |\n| --- | --- | --- | --- |")
    for g in eq["rungs"]:
        print(f"| baseline | {g['steps']} | {g['multiple']:.2f} | {g['val_loss']:.4f} |")
    print(f"| TST | {eq['tst']['steps']} | 1.00 | {eq['tst']['val_loss']:.4f} |\n\n{eq['reading']}\n")


def curve(run_dir: Path, longest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return a run's evaluations as (FLOPs, val loss). A shorter rung is one decay branched off the longest
    rung's trunk, so only its decay is returned; the first evaluation (no FLOPs yet) is left out."""
    start = 0 if longest or run_dir.name == "tst" else decay_start(load_config(config_file=run_dir / "config.toml"))
    rows = [r for r in val_rows(run_dir) if r.get("flops", 0) > 0 and r["step"] >= start]
    return np.array([r["flops"] for r in rows]), np.array([r["val_loss"] for r in rows])


def mark_equal_loss(ax, both: dict, y: float, right_edge: float) -> None:
    """Mark the equal-loss point and its 95% interval at height ``y``; an open end runs out as an arrow."""
    lo, hi = both["interval"] or (None, None)
    flops = both["tst"]["flops"]
    left, right = (lo * flops if lo else 0.85 * flops), (hi * flops if hi else right_edge)
    ax.annotate("", xy=(left, y), xytext=(right, y), arrowprops={"arrowstyle": "-|>" if lo is None else "-",
                                                                  "color": "k", "linewidth": 1.2})
    if hi is None:
        ax.annotate("", xy=(right, y), xytext=(left, y), arrowprops={"arrowstyle": "-|>", "color": "k"})
    words = f"{'below 1' if lo is None else f'{lo:.2f}'} to {'open' if hi is None else f'{hi:.2f}'}"
    ax.plot([both["speedup"] * flops], [y], "D", color="k", markersize=6,
            label=f"equal loss: {both['speedup']:.2f}x TST's compute (95% interval {words})")


def plot(dirs: list[str], both: dict, path: Path) -> None:
    """Draw the headline: val loss against FLOPs for TST and the baseline ladder, the equal-loss point marked."""
    fig, ax = new_figure((8, 5))
    longest = f"baseline-x{max(g['multiple'] for g in both['rungs']):g}"
    for k, d in enumerate(dirs):
        for run in sorted((Path(d) / "runs").iterdir()):
            x, y = curve(run, run.name == longest)
            tst = run.name == "tst"
            label = ("TST, every evaluation" if tst else "baselines, every evaluation (one trunk, a decay per rung)"
                     ) if k == 0 and run.name in ("tst", longest) else None
            ax.plot(x, y, color="C3" if tst else "C0", alpha=0.5 if tst else 0.3, linewidth=1, label=label)
    rungs, t = both["rungs"], both["tst"]
    fx, fy = np.array([g["flops"] for g in rungs]), np.array([g["val_loss"] for g in rungs])
    ax.plot(fx, fy, "o", color="C0", label=f"baseline ladder: final val loss, mean of {len(dirs)} seeds")
    ax.plot(fx, non_increasing(fy), "-", color="C0", alpha=0.6)
    for g, y in zip(rungs, fy):
        ax.annotate(f"{g['multiple']:.2f}x", (g["flops"], y), textcoords="offset points", xytext=(4, 6),
                    fontsize=8)
    tst_y = t["val_loss"]
    ax.plot([t["flops"]], [tst_y], "*", color="C3", markersize=15, label="TST: final val loss, same mean")
    ax.axhline(tst_y, color="C3", linestyle=":", linewidth=1)
    if both["speedup"] is not None:
        mark_equal_loss(ax, both, tst_y - 0.006, 1.1 * fx[-1])
    ax.set_xscale("log")
    ax.set_xlim(0.4 * t["flops"], 1.1 * fx[-1])
    ax.set_ylim(min(fy.min(), tst_y) - 0.03, tst_y + 0.35)
    save_figure(fig, ax, path, "training FLOPs", "next-token validation loss (nats)", legend_at="upper right")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--plot", type=Path, metavar="PATH", help="also draw the headline figure to PATH")
    args = p.parse_args(argv)
    results = read(args.dirs)
    for d, result in zip(args.dirs, results):
        print_seed(d, result)
    both = over_seeds([r["equal_loss"] for r in results])
    if len(results) > 1:
        per = ", ".join("past the ladder" if s is None else f"{s:.2f}x" for s in both["per_seed"])
        print(f"## Over {both['seeds']} seeds\n\nPer seed: {per}. Mean final val losses, the seed spread added to "
              f"the noise ({both['noise']:.4f} nats a final value):\n\n{both['reading']}")
    if args.plot:
        plot(args.dirs, both, args.plot)


if __name__ == "__main__":
    main(sys.argv[1:])
