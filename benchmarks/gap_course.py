"""Draw the course of TST's gap to its baseline: TST's val loss minus the baseline's at each evaluation.

Each CELL is a dir holding ``baseline/`` and one TST run (``tst/`` or ``tst-s*``), the layout of a scale or
compare run; LABEL names its curve. The gap is read at the evaluations both runs made (the same steps,
so the same FLOPs), and drawn against the fraction of the run, the switch and the decay start marked.
Nothing is trained.

    python benchmarks/gap_course.py OUT.png LABEL=CELL [LABEL=CELL ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from _figures import new_figure, save_figure
from tstrain.config import Config, load_config
from tstrain.studies.runs import decay_start, val_rows


def gap_course(cell: Path) -> tuple[list[float], list[float], Config]:
    """Return (fraction of the run, TST minus baseline) at the shared evaluations, and TST's config."""
    tst = next(p for p in sorted(cell.iterdir()) if p.name.startswith("tst"))
    base = {r["step"]: r["val_loss"] for r in val_rows(cell / "baseline")}
    mine = {r["step"]: r["val_loss"] for r in val_rows(tst)}
    cfg = load_config(config_file=tst / "config.toml")
    shared = sorted(set(base) & set(mine) - {0})
    return [s / cfg.train.steps for s in shared], [mine[s] - base[s] for s in shared], cfg


def main(out: str, cells: list[str]) -> None:
    fig, ax = new_figure()
    for item in cells:
        label, _, path = item.partition("=")
        x, y, cfg = gap_course(Path(path))
        ax.plot(x, y, linewidth=1, label=f"{label} (final {y[-1]:+.3f})")
    ax.axvline(cfg.switch_step / cfg.train.steps, color="grey", linestyle=":", linewidth=1,
               label=f"the switch (r={cfg.tst.ratio:g})")
    ax.axvline(decay_start(cfg) / cfg.train.steps, color="grey", linestyle="--", linewidth=1, label="the decay starts")
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_ylim(-0.2, 0.4)
    save_figure(fig, ax, out, "fraction of the run's steps (equal FLOPs per step in both arms)",
                "TST minus baseline val loss (nats)")


if __name__ == "__main__":
    if len(sys.argv) < 3 or any("=" not in c for c in sys.argv[2:]):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
