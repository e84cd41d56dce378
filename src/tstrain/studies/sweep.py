"""The s x r sweep: a grid of TST runs, plus the baseline once (the named ablations are ``ablate``).

Every run lives in its own directory under the sweep dir; a finished run (``summary.json``) is
skipped and an interrupted one resumed, so a sweep can be stopped and restarted at will. The
result is the paper's kind of table: final next-token validation loss per (s, r), with the
baseline row, and plots (a heat map, and the loss against s at the best r: the U-shape). Each
gap to the baseline is read against the evaluation noise of the baseline's curve
(``statistics.gap_reading``): "within noise" rather than a win or a loss where it is. With
``baseline_lr`` the baseline trains at its own LR and every TST run at ``optim.lr`` (each arm tuned
apart); the gaps keep their reading and the phase-1 step values are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import ConfigError
from ..fileio import save_figure, write_text_atomic
from ..options import check
from ..run_lock import locked
from .plans import SweepOptions
from .report_text import data_line, estimate_text, gap_text, json_text, lr_line, noise_text
from .runs import baseline_of, data_record, eval_noise, lrs_of, run_or_reuse, step_values
from .statistics import NOT_COMPARABLE, GapReading, comparable, gap_reading


@dataclass(frozen=True)
class SweepTable:
    """What a sweep measured: the baseline's final val loss and, per bag size s and ratio r (keyed as their text,
    as ``sweep.json`` holds them), each TST run's final val loss, its gap to the baseline read against the
    evaluation noise, and its phase-1 step value with its interval; ``report_text.json_text`` writes it as
    ``sweep.json``."""

    baseline: float
    bag_sizes: tuple[int, ...]
    ratios: tuple[float, ...]
    eval_noise: float | None
    lrs: dict[str, float]  # the baseline's LR and the TST runs'
    grid: dict[str, dict[str, float]]
    gap: dict[str, dict[str, GapReading]]
    phase1_step_value: dict[str, dict[str, float | None]]
    phase1_step_value_interval: dict[str, dict[str, list[float | None] | None]]


def grid_configs(cfg: Config, grid: SweepOptions, baseline_lr: float | None = None) -> dict[str, Config]:
    """Return ``{run name: config}`` for the baseline (at ``baseline_lr`` if given) and every (s, r) of the grid."""
    runs = {"baseline": baseline_of(cfg, baseline_lr)}
    for s in grid.bag_sizes:
        for r in grid.ratios:
            runs[f"s{s}-r{r:g}"] = cfg.with_values({"tst.bag_size": s, "tst.ratio": r})
    return runs


def sweep(cfg: Config, out_dir: str | Path, grid: SweepOptions | None = None,
          baseline_lr: float | None = None) -> SweepTable:
    """Run the s x r ``grid`` (``plans.SweepOptions``) and the baseline; write ``sweep.json``, ``sweep.md`` and plots.
    A grid that cannot train (its rules, in the words of its flags) is refused before anything is written."""
    grid = grid or SweepOptions()
    check(grid, ConfigError)
    bag_sizes, ratios = grid.bag_sizes, grid.ratios
    runs = grid_configs(cfg, grid, baseline_lr)
    with locked(out_dir, "sweep dir") as out:
        results = {name: run_or_reuse(c, out / name)["final_val_loss"] for name, c in runs.items()}
        values = step_values(runs, out)
        noise = eval_noise(cfg, out)
        names = {f"{s}": {f"{r:g}": f"s{s}-r{r:g}" for r in ratios} for s in bag_sizes}
        table = SweepTable(
            results["baseline"], bag_sizes, ratios, noise, lrs_of(runs),
            grid={s: {r: results[n] for r, n in row.items()} for s, row in names.items()},
            gap={s: {r: gap_reading([results[n] - results["baseline"]], [noise]) for r, n in row.items()}
                 for s, row in names.items()},
            phase1_step_value={s: {r: values[n].value for r, n in row.items()} for s, row in names.items()},
            phase1_step_value_interval={s: {r: values[n].interval for r, n in row.items()} for s, row in names.items()})
        write_text_atomic(out / "sweep.json", json_text(table))
        write_text_atomic(out / "sweep.md", sweep_markdown(table, cfg))
        plot_sweep(table, out)
        return table


def sweep_markdown(table: SweepTable, cfg: Config) -> str:
    """Return the paper-style table: final val loss per s (rows) and r (columns), baseline first."""
    rs = table.ratios
    best = min((v, s, r) for s, row in table.grid.items() for r, v in row.items())
    lines = [f"Final next-token validation loss, {cfg.train.steps} steps, "
             f"B={cfg.train.batch_size}, L={cfg.train.seq_len} "
             f"(lower is better; baseline {table.baseline:.4f}; best s={best[1]}, r={best[2]}: {best[0]:.4f}, "
             f"{best[0] - table.baseline:+.4f} vs baseline, {table.gap[best[1]][best[2]].reading})."
             + lr_line(table.lrs), "", data_line(data_record(cfg.data.path)), "",
             "| s \\ r | " + " | ".join(f"{r:g}" for r in rs) + " |", "| --- |" + " --- |" * len(rs),
             "| baseline | " + " | ".join(f"{table.baseline:.4f}" for _ in rs) + " |"]
    for s, row in table.grid.items():
        lines.append(f"| {s} | " + " | ".join(f"{row[f'{r:g}']:.4f}" for r in rs) + " |")
    noise = table.eval_noise
    lines += ["", "TST minus baseline, with the 95% half-width from the evaluation noise of the baseline's curve "
              f"({noise_text(noise)}; "
              "one seed):", "",
              "| s \\ r | " + " | ".join(f"{r:g}" for r in rs) + " |", "| --- |" + " --- |" * len(rs)]
    for s, row in table.gap.items():
        lines.append(f"| {s} | " + " | ".join(gap_text(row[f"{r:g}"]) for r in rs) + " |")
    if not comparable(table.lrs["baseline"], table.lrs["tst"]):
        return "\n".join([*lines, "", f"Phase-1 step value: not comparable: {NOT_COMPARABLE}."]) + "\n"
    lines += ["", "Phase-1 step value (baseline steps a phase-1 step buys: TST's last 5 evaluations before the LR "
              "decay against the baseline's fitted curve, with its 95% interval; 1 is break-even at equal FLOPs; "
              "n/a: not measurable, see each run's curves):", "",
              "| s \\ r | " + " | ".join(f"{r:g}" for r in rs) + " |", "| --- |" + " --- |" * len(rs)]
    for s, row in table.phase1_step_value.items():
        ivs = table.phase1_step_value_interval[s]
        lines.append(f"| {s} | " + " | ".join(estimate_text(row[f"{r:g}"], ivs[f"{r:g}"]) for r in rs) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(table: SweepTable, out: Path) -> None:
    """Write ``sweep_heatmap.png`` (loss minus baseline per s, r) and ``sweep_bag_size.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ss, rs = table.bag_sizes, table.ratios
    delta = np.array([[table.grid[f"{s}"][f"{r:g}"] - table.baseline for r in rs] for s in ss])
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(rs), 1.4 + 0.6 * len(ss)))
    lim = float(np.abs(delta).max()) or 1.0
    im = ax.imshow(delta, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(rs)), [f"{r:g}" for r in rs])
    ax.set_yticks(range(len(ss)), [str(s) for s in ss])
    ax.set_xlabel("ratio r")
    ax.set_ylabel("bag size s")
    for i in range(len(ss)):
        for j in range(len(rs)):
            ax.text(j, i, f"{delta[i, j]:+.3f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, label="val loss minus baseline (nats)")
    fig.tight_layout()
    save_figure(fig, out / "sweep_heatmap.png")
    plt.close(fig)
    best_r = rs[int(np.argmin(delta.min(axis=0)))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ss, [table.grid[f"{s}"][f"{best_r:g}"] for s in ss], marker="o", label=f"TST, r={best_r:g}")
    ax.axhline(table.baseline, color="grey", linestyle="--", label="baseline")
    ax.set_xlabel("bag size s")
    ax.set_ylabel("final next-token val loss (nats)")
    ax.set_xticks(ss)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "sweep_bag_size.png")
    plt.close(fig)
