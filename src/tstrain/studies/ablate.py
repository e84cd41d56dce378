"""The paper's ablations: the baseline and each named ablation (``plans.ABLATIONS``, a set of config overrides) at
one (s, r), each against the baseline.

Every run lives in its own directory under the ablation dir, reused when finished and resumed when interrupted.
The report gives each run's val loss at the switch and at the end, its gap to the baseline read against the
evaluation noise of the baseline's curve (``statistics.gap_reading``), and its phase-1 step value with its interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..fileio import save_figure, write_text_atomic
from ..run_lock import locked
from .plans import ABLATIONS
from .report_text import data_line, estimate_text, gap_text, json_text, lr_line, noise_text
from .runs import baseline_of, data_record, eval_noise, lrs_of, run_or_reuse, step_values, val_rows
from .statistics import GapReading, StepValue, gap_reading, value_at


@dataclass(frozen=True)
class AblationRun:
    """One run of the ablations as ``ablations.json`` holds it: its val loss at the switch and at the end, its phase-1
    step value with its interval (None for the baseline), its gap to the baseline, its data tokens and overrides
    (``report_text.json_text`` writes its fields)."""

    final_val_loss: float
    val_loss_at_switch: float | None
    phase1_step_value: float | None
    phase1_step_value_interval: list[float | None] | None
    vs_baseline: GapReading
    data_tokens: int
    overrides: dict[str, Any]


def ablate(cfg: Config, out_dir: str | Path, names: list[str] | None = None,
           extra: dict[str, dict[str, Any]] | None = None, baseline_lr: float | None = None) -> dict[str, AblationRun]:
    """Run the baseline (at ``baseline_lr`` if given) and each named ablation at the config's (s, r);
    write ``ablations.json/md``."""
    table_of: dict[str, dict[str, Any]] = {**ABLATIONS, **(extra or {})}
    names = names or list(table_of)
    unknown = [n for n in names if n not in table_of]
    if unknown:
        raise ValueError(f"unknown ablation(s) {', '.join(unknown)}; known: {', '.join(table_of)}")
    runs: dict[str, Config] = {"baseline": baseline_of(cfg, baseline_lr)}
    for n in names:
        runs[n] = cfg.with_values(table_of[n])
    with locked(out_dir, "ablation dir") as out:
        summaries = {n: run_or_reuse(c, out / n) for n, c in runs.items()}
        switch = cfg.switch_step
        vals = {n: val_rows(out / n) for n in runs}
        values = step_values(runs, out)
        noise = eval_noise(cfg, out)
        base = summaries["baseline"]["final_val_loss"]
        result = {n: AblationRun(s["final_val_loss"], value_at(vals[n], switch),
                                 values[n].value if n in values else None, values[n].interval if n in values else None,
                                 gap_reading([s["final_val_loss"] - base], [noise]), s["data_tokens"],
                                 table_of.get(n, {"tst.ratio": 0.0}))
                  for n, s in summaries.items()}
        write_text_atomic(out / "ablations.json", json_text(result))
        write_text_atomic(out / "ablations.md", ablations_markdown(result, values, cfg, noise, lrs_of(runs)))
        plot_ablations(vals, switch, out / "ablations.png")
        return result


def ablations_markdown(result: dict[str, AblationRun], values: dict[str, StepValue], cfg: Config, noise: float | None,
                       lrs: dict[str, float]) -> str:
    """Return ablations.md: one row per run, its val loss at the switch and at the end, its gap to the baseline and
    its phase-1 step value."""
    switch = cfg.switch_step
    lines = [f"Ablations at s={cfg.tst.bag_size}, r={cfg.tst.ratio}, {cfg.train.steps} steps, "
             f"switch at step {switch} (next-token val loss; lower is better; vs baseline with the 95% "
             f"half-width from the evaluation noise of the baseline's curve, "
             f"{noise_text(noise)}; "
             "phase-1 step value with its 95% interval)." + lr_line(lrs), "",
             data_line(data_record(cfg.data.path)), "",
             f"| run | overrides | val loss at step {switch} | final val loss | vs baseline | "
             "phase-1 step value | data tokens |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, r in result.items():
        ov = ", ".join(f"{k}={v}" for k, v in r.overrides.items()) or "(the method)"
        at = "" if r.val_loss_at_switch is None else f"{r.val_loss_at_switch:.4f}"
        value = "" if n == "baseline" else (
            "not comparable" if values[n].reading == "not comparable"
            else estimate_text(r.phase1_step_value, r.phase1_step_value_interval))
        vs = "" if n == "baseline" else gap_text(r.vs_baseline)
        lines.append(f"| {n} | {ov} | {at} | {r.final_val_loss:.4f} | {vs} | {value} | {r.data_tokens:,} |")
    return "\n".join(lines) + "\n"


def plot_ablations(vals: dict[str, list[dict[str, Any]]], switch: int, path: Path) -> None:
    """Write the val-loss curves of every ablation run: the whole run, and the steps after the switch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.get_cmap("tab20").colors  # distinct colours for up to 20 runs
    for ax, first in zip(axes, (1, switch)):
        for i, (n, rows) in enumerate(vals.items()):
            rows = [r for r in rows if r["step"] >= first]
            style = {"color": "black", "linewidth": 2} if n == "baseline" else {"color": colours[i % 20]}
            ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], label=n, **style)
        ax.axvline(switch, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("next-token val loss (nats)")
        ax.grid(alpha=0.3)
    axes[0].set_title("whole run")
    axes[1].set_title(f"from the switch (step {switch})")
    axes[1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
