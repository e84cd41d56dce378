"""Where TST starts to pay: baseline vs TST over a grid of run lengths and model sizes.

Each size is a preset (a model shape and its batch geometry). Its learning rate is tuned on its
own baseline first (``--lrs``, the best final val loss at ``tune_steps``), then used by both
arms at every run length: one tuning protocol for both. For every (size, steps, seed) cell the
study records tokens per parameter, the equal-FLOPs gap, the phase-1 step value, the gap at the
switch and the steps TST takes to halve it, then fits the gap against log10(steps) per size to
say where the trend crosses zero. Runs are reused when finished and resumed when interrupted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .config import Config, load_config, padded_vocab
from .data import TokenData
from .experiments import baseline_of, decay_start, phase1_step_value, run_or_reuse, val_rows, value_at
from .models import model_info
from .run_lock import locked


def tune_lr(cfg: Config, out: Path, lrs: list[float], steps: int) -> tuple[float, dict[str, float]]:
    """Return the LR whose baseline run of ``steps`` ends lowest, and every LR's final val loss."""
    finals = {}
    for lr in lrs:
        c = baseline_of(cfg).with_values({"optim.lr": lr, "train.steps": steps})
        finals[f"{lr:g}"] = run_or_reuse(c, out / f"lr{lr:g}")["final_val_loss"]
    best = min(lrs, key=lambda lr: finals[f"{lr:g}"])
    return best, finals


def half_recovery_steps(base: list[dict], tst: list[dict], switch: int) -> float | None:
    """Return the steps after the switch until TST's gap to the baseline is half its gap at the switch."""
    at_switch = value_at(tst, switch), value_at(base, switch)
    if None in at_switch:
        return None
    gap0 = at_switch[0] - at_switch[1]
    if gap0 <= 0:
        return None  # TST is not behind at the switch: nothing to recover
    for r in tst:
        b = value_at(base, r["step"])
        if r["step"] > switch and b is not None and r["val_loss"] - b <= gap0 / 2:
            return float(r["step"] - switch)
    return None


def cell_figures(base_dir: Path, tst_dir: Path, cfg: Config, params: int) -> dict[str, Any]:
    """Return the figures of one (size, steps, seed, arm) cell against its baseline."""
    base, tst = val_rows(base_dir), val_rows(tst_dir)
    b_sum = json.loads((base_dir / "summary.json").read_text())
    t_sum = json.loads((tst_dir / "summary.json").read_text())
    S = cfg.switch_step
    value = phase1_step_value(base, tst, S, decay_start(cfg))
    switch_gap = None
    if value_at(tst, S) is not None and value_at(base, S) is not None:
        switch_gap = value_at(tst, S) - value_at(base, S)
    return {
        "baseline_val_loss": b_sum["final_val_loss"], "tst_val_loss": t_sum["final_val_loss"],
        "gap": t_sum["final_val_loss"] - b_sum["final_val_loss"], "flops": b_sum["flops"],
        "tokens_per_param": b_sum["data_tokens"] / params, "tst_tokens_per_param": t_sum["data_tokens"] / params,
        "phase1_step_value": value["value"], "phase1_step_value_reason": value["reason"],
        "gap_at_switch": switch_gap, "half_recovery_steps": half_recovery_steps(base, tst, S),
    }


def arm_name(bag_size: int, ratio: float) -> str:
    return f"tst-s{bag_size}-r{ratio:g}"


def run_cell(cfg: Config, out: Path, arms: list[tuple[int, float]], params: int) -> dict[str, Any]:
    """Train (or reuse) one cell's baseline and TST arms; return each arm's figures."""
    run_or_reuse(baseline_of(cfg), out / "baseline")
    figures = {}
    for s, r in arms:
        c = cfg.with_values({"tst.bag_size": s, "tst.ratio": r})
        run_or_reuse(c, out / arm_name(s, r))
        figures[arm_name(s, r)] = cell_figures(out / "baseline", out / arm_name(s, r), c, params)
    return figures


def fit_crossing(points: list[tuple[int, float]]) -> dict[str, Any] | None:
    """Fit ``gap = a + b * log10(steps)`` by least squares; return it with the steps where it crosses 0.

    ``crossing_range`` uses the slope plus and minus one standard error (None where the slope does
    not point down): a trend line, not a prediction to trust far outside the measured steps.
    """
    xs = [math.log10(n) for n, _ in points]
    ys = [g for _, g in points]
    if len(set(xs)) < 2:
        return None
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    resid = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    se = math.sqrt(resid / (n - 2) / sxx) if n > 2 else float("nan")

    def crossing(slope: float) -> float | None:
        return 10 ** (mx - my / slope) if slope < 0 else None  # the line through (mx, my) with this slope

    return {"intercept": a, "slope_per_decade": b, "slope_se": se, "crossing_steps": crossing(b),
            "crossing_range": [crossing(b - se), crossing(b + se)] if math.isfinite(se) else None}


def scale_study(data: str, out_dir: str | Path, sizes: list[str], steps: list[int], arms: list[tuple[int, float]],
                seeds: list[int], lrs: list[float] | None = None, tune_steps: int = 2000,
                overrides: dict | None = None, repeat_within: float = 0.05) -> dict[str, Any]:
    """Run the study and write ``scale.json``, ``scale.md`` and plots under ``out_dir``.

    A cell whose gap is within ``repeat_within`` nats on the first seed is repeated on every seed
    in ``seeds`` (others run on the first seed only), so close calls are not read from one run.
    """
    with locked(out_dir, "study dir") as out:
        vocab = TokenData(data).vocab_size
        result: dict[str, Any] = {"data": str(Path(data).resolve()), "arms": [arm_name(s, r) for s, r in arms],
                                  "sizes": {}}
        for size in sizes:
            cfg = load_config(size, overrides={**(overrides or {}), "data.path": data})
            params = model_info(cfg.model, padded_vocab(vocab, cfg.model.pad_vocab_multiple),
                                cfg.train.seq_len)["parameters"]["total"]
            entry: dict[str, Any] = {"parameters": params, "lr": cfg.optim.lr, "cells": {}}
            if lrs:
                entry["lr"], entry["lr_tuning"] = tune_lr(cfg, out / size / "lr-tuning", lrs, tune_steps)
                cfg = cfg.with_values({"optim.lr": entry["lr"]})
            for n in steps:
                cell_cfg = cfg.with_values({"train.steps": n})
                per_seed = {}
                for i, seed in enumerate(seeds):
                    seeded = cell_cfg.with_values({"train.seed": seed})
                    if i > 0 and all(abs(f["gap"]) > repeat_within for f in per_seed[seeds[0]].values()):
                        break
                    per_seed[seed] = run_cell(seeded, out / size / f"steps{n}" / f"seed{seed}", arms, params)
                entry["cells"][str(n)] = {str(seed): figs for seed, figs in per_seed.items()}
            entry["fits"] = {arm_name(s, r): fit_crossing([(int(n), _mean(cell, arm_name(s, r), "gap"))
                                                           for n, cell in entry["cells"].items()]) for s, r in arms}
            result["sizes"][size] = entry
            (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "scale.md").write_text(scale_markdown(result))
        plot_scale(result, out)
        return result


def _mean(cell: dict[str, dict], arm: str, key: str) -> float | None:
    values = [figs[arm][key] for figs in cell.values() if figs[arm][key] is not None]
    return sum(values) / len(values) if values else None


def _num(x: float | None, spec: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def scale_markdown(result: dict[str, Any]) -> str:
    """Return the study's tables: one row per (size, steps, arm), seeds averaged (and listed)."""
    lines = ["| size | params | steps | arm | tokens/param (baseline, TST) | baseline | TST | gap (seeds) | "
             "phase-1 step value | gap at switch | steps to halve it |", "| --- |" * 1 + " --- |" * 10]
    for size, entry in result["sizes"].items():
        for n, cell in entry["cells"].items():
            for arm in result["arms"]:
                first = next(iter(cell.values()))[arm]
                gaps = ", ".join(f"{figs[arm]['gap']:+.4f}" for figs in cell.values())
                lines.append(
                    f"| {size} | {entry['parameters'] / 1e6:.2f}M | {n} | {arm} | {first['tokens_per_param']:.1f}, "
                    f"{first['tst_tokens_per_param']:.1f} | {_mean(cell, arm, 'baseline_val_loss'):.4f} | "
                    f"{_mean(cell, arm, 'tst_val_loss'):.4f} | {_mean(cell, arm, 'gap'):+.4f} ({gaps}) | "
                    f"{_num(_mean(cell, arm, 'phase1_step_value'), '.2f')} | "
                    f"{_num(_mean(cell, arm, 'gap_at_switch'), '+.3f')} | "
                    f"{_num(_mean(cell, arm, 'half_recovery_steps'), '.0f')} |")
    lines += ["", "Trend of the gap against log10(steps), per size and arm "
              "(least squares over the cells' mean gaps):", "",
              "| size | arm | gap per decade of steps | +- 1 s.e. | crossing at steps | range (slope +- 1 s.e.) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for size, entry in result["sizes"].items():
        for arm, fit in entry["fits"].items():
            if fit is None:
                continue
            rng = fit["crossing_range"] or [None, None]
            lines.append(f"| {size} | {arm} | {fit['slope_per_decade']:+.4f} | {_num(fit['slope_se'], '.4f')} | "
                         f"{_num(fit['crossing_steps'], ',.0f')} | {_num(rng[0], ',.0f')} to {_num(rng[1], ',.0f')} |")
    return "\n".join(lines) + "\n"


def plot_scale(result: dict[str, Any], out: Path) -> None:
    """Write ``scale_gap.png``: the gap and the phase-1 step value against steps and against FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for size, entry in result["sizes"].items():
        for arm in result["arms"]:
            cells = entry["cells"]
            ns = [int(n) for n in cells]
            label = f"{size} ({entry['parameters'] / 1e6:.2f}M), {arm}"
            axes[0].plot(ns, [_mean(c, arm, "gap") for c in cells.values()], marker="o", label=label)
            values = [_mean(c, arm, "phase1_step_value") for c in cells.values()]
            axes[1].plot([n for n, v in zip(ns, values) if v is not None], [v for v in values if v is not None],
                         marker="o", label=label)
            axes[2].plot([_mean(c, arm, "flops") for c in cells.values()],
                         [_mean(c, arm, "gap") for c in cells.values()], marker="o", label=label)
    for ax, (xlabel, ylabel, level) in zip(axes, [("steps", "TST minus baseline val loss (nats)", 0.0),
                                                   ("steps", "phase-1 step value (baseline steps)", 1.0),
                                                   ("training FLOPs", "TST minus baseline val loss (nats)", 0.0)]):
        ax.axhline(level, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scale_gap.png", dpi=120)
    plt.close(fig)
