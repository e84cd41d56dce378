"""Where TST starts to pay: baseline vs TST over a grid of run lengths and model sizes.

Each size is a preset (a model shape and its batch geometry). Its learning rate is tuned on its own
baseline first (``--lrs``, the best final val loss at ``tune_steps``), then used by both arms at
every run length: the paper's protocol. With ``--tune-arms`` each TST arm is tuned the same way on
its own runs and trained at its own best LR; its phase-1 step value and switch figures are then not
comparable. For every (size, steps, seed) cell the study records tokens per parameter, the
equal-FLOPs gap, the phase-1 step value, the gap at the switch and the steps TST takes to halve it,
then fits the gap against log10(steps) per size to say where the trend crosses zero. Gaps and
phase-1 step values are read against the evaluation noise of each baseline's curve and, with two
seeds or more, the seed spread (``statistics.gap_reading``, ``statistics.value_summary``). Each
arm's compute to equal loss is read against the study's baselines at its run length and every longer
one (``ladder.equal_loss``). A cell's first seed settles it when its gap is beyond the noise of a
final value, measured within the decays (``ladder.final_noise``). Runs are reused when finished and
resumed when interrupted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..data.tokens import TokenData
from ..errors import ConfigError
from ..fileio import save_figure, write_text_atomic
from ..models import model_info
from ..options import check
from ..run_lock import locked
from ..train.run_dir import CONFIG, SUMMARY, read_summary
from .ladder import equal_loss, final_noise, over_seeds
from .plans import ScaleOptions
from .plots import save_step_value_course
from .report_text import data_line, interval_text, number, value_text
from .runs import baseline_of, data_record, decay_start, run_or_reuse, val_rows
from .statistics import (
    GapReading,
    StepValue,
    ValueSummary,
    comparable,
    fit_curve,
    gap_reading,
    not_comparable_value,
    phase1_step_value,
    value_at,
    value_summary,
)


def tune_lr(cfg: Config, out: Path, lrs: list[float], steps: int) -> tuple[float, dict[str, float]]:
    """Return the LR whose run of ``cfg`` (a baseline or an arm) for ``steps`` ends lowest, and every LR's
    final val loss."""
    finals = {}
    for lr in lrs:
        c = cfg.with_values({"optim.lr": lr, "train.steps": steps})
        finals[f"{lr:g}"] = run_or_reuse(c, out / f"lr{lr:g}")["final_val_loss"]
    best = min(lrs, key=lambda lr: finals[f"{lr:g}"])
    return best, finals


def tune_size(cfg: Config, out: Path, o: ScaleOptions) -> dict[str, Any]:
    """Tune one size's baseline LR over ``o.lrs`` (and, with ``o.tune_arms``, each arm's on its own runs
    under ``out/ARM``); return ``lr``, ``lr_tuning`` and, when tuned, ``arm_lrs``, ``arm_lr_tuning``."""
    found: dict[str, Any] = {}
    found["lr"], found["lr_tuning"] = tune_lr(baseline_of(cfg), out, list(o.lrs), o.tune_steps)
    if o.tune_arms:
        found["arm_lrs"], found["arm_lr_tuning"] = {}, {}
        for s, r in o.arms:
            name = arm_name(s, r)
            arm = cfg.with_values({"tst.bag_size": s, "tst.ratio": r})
            found["arm_lrs"][name], found["arm_lr_tuning"][name] = tune_lr(arm, out / name, list(o.lrs), o.tune_steps)
    return found


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
    b_sum, t_sum = (read_summary(d, "run the same command again to finish that run") for d in (base_dir, tst_dir))
    S = cfg.switch_step
    base_lr = load_config(config_file=base_dir / CONFIG).optim.lr
    fit = fit_curve(base, cfg.optim.warmup_steps, decay_start(cfg))
    switch_gap = None
    if not comparable(base_lr, cfg.optim.lr):
        value = not_comparable_value()
    else:
        value = phase1_step_value(base, tst, S, decay_start(cfg), cfg.optim.warmup_steps)
        if value_at(tst, S) is not None and value_at(base, S) is not None:
            switch_gap = value_at(tst, S) - value_at(base, S)
    return {
        "lr": cfg.optim.lr, "baseline_lr": base_lr,
        "baseline_val_loss": b_sum["final_val_loss"], "tst_val_loss": t_sum["final_val_loss"],
        "gap": t_sum["final_val_loss"] - b_sum["final_val_loss"], "flops": b_sum["flops"],
        "tokens_per_param": b_sum["data_tokens"] / params, "tst_tokens_per_param": t_sum["data_tokens"] / params,
        "eval_noise": fit.noise if fit else None, "tst_flops": t_sum["flops"],
        "final_noise": final_noise([(base, decay_start(cfg)), (tst, decay_start(cfg))]),
        "phase1_step_value": value.value, "phase1_step_value_reason": value.reason,
        "phase1_step_value_interval": value.interval, "phase1_step_value_reading": value.reading,
        "phase1_step_value_course": [[p["step"], p["value"]] for p in value.course],
        "gap_at_switch": switch_gap,
        "half_recovery_steps": None if switch_gap is None else half_recovery_steps(base, tst, S),
    }


def arm_name(bag_size: int, ratio: float) -> str:
    return f"tst-s{bag_size}-r{ratio:g}"


def run_cell(cfg: Config, out: Path, arms: list[tuple[int, float]], params: int,
             arm_lrs: dict[str, float] | None = None) -> dict[str, Any]:
    """Train (or reuse) one cell's baseline and TST arms (each at its LR in ``arm_lrs``, else the
    baseline's); return each arm's figures."""
    run_or_reuse(baseline_of(cfg), out / "baseline")
    figures = {}
    for s, r in arms:
        c = cfg.with_values({"tst.bag_size": s, "tst.ratio": r,
                             "optim.lr": (arm_lrs or {}).get(arm_name(s, r), cfg.optim.lr)})
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


def gap_trend(cells: dict[str, dict], arm: str) -> dict[str, Any] | None:
    """Return ``fit_crossing`` over the run lengths at which ``arm`` was measured (each cell's mean gap)."""
    points = [(int(n), _mean(cell, arm, "gap")) for n, cell in cells.items()]
    return fit_crossing([(n, g) for n, g in points if g is not None])


def settled(figures: dict[str, Any], within: float) -> bool:
    """Return whether one seed's cell figures (``cell_figures``) settle the gap: beyond the noise of a final value
    (measured within the two runs' decays, ``ladder.final_noise``; where they hold too few evaluations, the
    baseline's stable phase) and more than ``within`` nats. A gap of unknown noise is not settled."""
    noise = figures.get("final_noise") or figures["eval_noise"]
    read = gap_reading([figures["gap"]], [noise]).reading
    return abs(figures["gap"]) > within and read in ("TST better", "baseline better")


def cell_equal_loss(cells: dict[str, dict], arm: str, n: str) -> dict[str, Any] | None:
    """Return the equal-loss speedup of ``arm`` at ``n`` steps against the study's baselines at ``n`` and every longer
    run length (each a full run with its own schedule), over the seeds that every one of those cells ran."""
    longer = [m for m in cells if int(m) >= int(n)]
    seeds = [k for k in cells[n] if arm in cells[n][k] and all(cells[m].get(k) for m in longer)]
    readings = []
    for k in seeds:
        base = [next(iter(cells[m][k].values())) for m in longer]  # any arm's figures name the cell's baseline
        rungs = [{"steps": int(m), "flops": f["flops"], "val_losses": [f["baseline_val_loss"]]} for m, f in
                 zip(longer, base)]
        f = cells[n][k][arm]
        tst = {"steps": int(n), "flops": f.get("tst_flops", f["flops"]), "val_losses": [f["tst_val_loss"]]}
        readings.append(equal_loss(rungs, tst, f.get("final_noise") or f.get("eval_noise")))
    return (readings[0] if len(readings) == 1 else over_seeds(readings)) if readings else None


def equal_loss_of(entry: dict[str, Any], arms: list[str]) -> dict[str, dict[str, Any]]:
    """Return each arm's equal-loss speedup per run length of one size (``cell_equal_loss``)."""
    cells = entry["cells"]
    return {arm: {n: r for n in cells if (r := cell_equal_loss(cells, arm, n)) is not None} for arm in arms}


def check_plan(data: str, o: ScaleOptions, overrides: dict | None) -> None:
    """Build the config of every run the study would train (each size, run length, arm and LR), so that a
    setting that cannot run (an arm whose ratio rounds to no phase-1 step at some length) is refused before
    the first run, not after hours of others."""
    for size in o.sizes:
        cfg = load_config(size, overrides={**(overrides or {}), "data.path": data})
        arms = [cfg.with_values({"tst.bag_size": s, "tst.ratio": r}) for s, r in o.arms]
        for c in [baseline_of(cfg), *arms]:
            for n in [*o.steps, *([o.tune_steps] if o.lrs else [])]:
                for lr in o.lrs or (c.optim.lr,):
                    c.with_values({"train.steps": n, "optim.lr": lr})


def scale_study(data: str, out_dir: str | Path, options: ScaleOptions | None = None,
                overrides: dict | None = None) -> dict[str, Any]:
    """Run the study of ``options`` (``ScaleOptions``) on the prepared data dir ``data`` and write ``scale.json``,
    ``scale.md`` and plots under ``out_dir``; ``overrides`` set config fields in every run.

    A cell that its first seed does not settle (``settled``) is repeated on every seed; others run
    on the first seed only, so close calls are not read from one run.
    """
    o = options or ScaleOptions()
    check(o, ConfigError)
    check_plan(data, o, overrides)
    with locked(out_dir, "study dir") as out:
        vocab = TokenData(data).vocab_size
        result: dict[str, Any] = {"data": str(Path(data).resolve()), "data_record": data_record(data),
                                  "arms": [arm_name(s, r) for s, r in o.arms], "sizes": {}}
        for size in o.sizes:
            cfg = load_config(size, overrides={**(overrides or {}), "data.path": data})
            params = model_info(cfg.model, cfg.model.vocab_for(vocab), cfg.train.seq_len)["parameters"]["total"]
            entry: dict[str, Any] = {"parameters": params, "lr": cfg.optim.lr, "cells": {}}
            if o.lrs:
                entry.update(tune_size(cfg, out / size / "lr-tuning", o))
                cfg = cfg.with_values({"optim.lr": entry["lr"]})
            for n in o.steps:
                cell_cfg = cfg.with_values({"train.steps": n})
                per_seed = {}
                for i, seed in enumerate(o.seeds):
                    seeded = cell_cfg.with_values({"train.seed": seed})
                    if i > 0 and all(settled(f, o.repeat_within) for f in per_seed[o.seeds[0]].values()):
                        break
                    per_seed[seed] = run_cell(seeded, out / size / f"steps{n}" / f"seed{seed}", list(o.arms), params,
                                              entry.get("arm_lrs"))
                entry["cells"][str(n)] = {str(seed): figs for seed, figs in per_seed.items()}
            entry["fits"] = {arm_name(s, r): gap_trend(entry["cells"], arm_name(s, r)) for s, r in o.arms}
            entry["equal_loss"] = equal_loss_of(entry, result["arms"])
            result["sizes"][size] = entry
            write_text_atomic(out / "scale.json", json.dumps(result, indent=2) + "\n")
        write_text_atomic(out / "scale.md", scale_markdown(result))
        plot_scale(result, out)
        return result


def read_study(out_dir: str | Path, report_dir: str | Path | None = None) -> dict[str, Any]:
    """Return a study rebuilt from the runs saved under ``out_dir`` (``SIZE/stepsN/seedK/{baseline,tst-*}``,
    each with its ``config.toml``, ``metrics.jsonl`` and ``summary.json``), training nothing, and rewrite
    its ``scale.md``, ``scale.json`` and plots in ``report_dir`` (default ``out_dir``): finished runs
    re-read with this version's readings.

    The arms and each size's LR tuning come from the report dir's ``scale.json`` where there is one.
    """
    out = Path(out_dir)
    report = Path(report_dir) if report_dir else out
    saved = json.loads((report / "scale.json").read_text()) if (report / "scale.json").is_file() else {}
    result: dict[str, Any] = {"data": saved.get("data"), "data_record": saved.get("data_record"),
                              "arms": list(saved.get("arms", [])), "sizes": {}}
    for size_dir in sorted(p for p in out.iterdir() if p.is_dir() and any(p.glob("steps*/seed*/baseline"))):
        entry: dict[str, Any] = {"cells": {}}
        for steps_dir in sorted(size_dir.glob("steps*"), key=lambda p: int(p.name.removeprefix("steps"))):
            cell = {}
            for seed_dir in sorted(steps_dir.glob("seed*"), key=lambda p: int(p.name.removeprefix("seed"))):
                figs = {}
                finished = [d for d in sorted(seed_dir.glob("tst-*")) if (d / SUMMARY).is_file()]
                if not (seed_dir / "baseline" / SUMMARY).is_file():
                    finished = []
                for arm_dir in finished:
                    cfg = load_config(config_file=arm_dir / CONFIG)
                    entry["parameters"] = model_info(cfg.model, cfg.model.vocab_for(cfg.model.vocab_size),
                                                     cfg.train.seq_len)["parameters"]["total"]
                    figs[arm_dir.name] = cell_figures(seed_dir / "baseline", arm_dir, cfg, entry["parameters"])
                    entry["lr"] = figs[arm_dir.name]["baseline_lr"]
                    if arm_dir.name not in result["arms"]:
                        result["arms"].append(arm_dir.name)
                if figs:
                    cell[seed_dir.name.removeprefix("seed")] = figs
            if cell:
                entry["cells"][steps_dir.name.removeprefix("steps")] = cell
        for key in ("lr_tuning", "arm_lrs", "arm_lr_tuning"):
            if key in saved.get("sizes", {}).get(size_dir.name, {}):
                entry[key] = saved["sizes"][size_dir.name][key]
        entry["fits"] = {arm: gap_trend(entry["cells"], arm) for arm in result["arms"]}
        entry["equal_loss"] = equal_loss_of(entry, result["arms"])
        result["sizes"][size_dir.name] = entry
    write_text_atomic(report / "scale.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(report / "scale.md", scale_markdown(result))
    plot_scale(result, report)
    return result


def _mean(cell: dict[str, dict], arm: str, key: str) -> float | None:
    values = [figs[arm][key] for figs in cell.values() if arm in figs and figs[arm][key] is not None]
    return sum(values) / len(values) if values else None


def cell_readings(cell: dict[str, dict], arm: str) -> tuple[GapReading, ValueSummary]:
    """Return one cell's gap reading and phase-1 step value over its seeds (``gap_reading``, ``value_summary``)."""
    figs = [f[arm] for f in cell.values() if arm in f]
    gap = gap_reading([f["gap"] for f in figs], [f.get("eval_noise") for f in figs])
    value = value_summary([StepValue(f["phase1_step_value"], f.get("phase1_step_value_interval"),
                                     f.get("phase1_step_value_reading", "not measured")) for f in figs])
    return gap, value


def scale_markdown(result: dict[str, Any]) -> str:
    """Return the study's tables: one row per (size, steps, arm), seeds averaged (and listed), with 95% intervals."""
    lines = ([data_line(result["data_record"]), ""] if result.get("data_record") else []) + lr_lines(result) + [
        "| size | params | steps | arm | tokens/param (baseline, TST) | baseline | TST | gap (seeds) | "
        "gap 95% interval | reading | phase-1 step value (95% interval) | gap at switch | steps to halve it |",
        "| --- |" * 1 + " --- |" * 12]
    for size, entry in result["sizes"].items():
        for n, cell in entry["cells"].items():
            for arm in [a for a in result["arms"] if any(a in figs for figs in cell.values())]:
                first = next(figs[arm] for figs in cell.values() if arm in figs)
                gaps = ", ".join(f"{figs[arm]['gap']:+.4f}" for figs in cell.values() if arm in figs)
                gap, value = cell_readings(cell, arm)
                label = arm if comparable(first.get("baseline_lr"), first.get("lr")) else f"{arm} at LR {first['lr']:g}"
                lines.append(
                    f"| {size} | {entry['parameters'] / 1e6:.2f}M | {n} | {label} | {first['tokens_per_param']:.1f}, "
                    f"{first['tst_tokens_per_param']:.1f} | {_mean(cell, arm, 'baseline_val_loss'):.4f} | "
                    f"{_mean(cell, arm, 'tst_val_loss'):.4f} | {_mean(cell, arm, 'gap'):+.4f} ({gaps}) | "
                    f"{interval_text(gap.interval, '+.3f')} | {gap.reading} | "
                    f"{value_text(value)} | "
                    f"{number(_mean(cell, arm, 'gap_at_switch'), '+.3f')} | "
                    f"{number(_mean(cell, arm, 'half_recovery_steps'), '.0f')} |")
    lines += ["", "Gap: TST minus baseline final val loss at equal FLOPs; its 95% interval comes from the evaluation "
              "noise of the baseline's fitted curve and, with two seeds or more, their spread. Phase-1 step value: "
              "TST's last 5 evaluations before the LR decay against the baseline's fitted stable-phase curve "
              "(1 is break-even; \"not resolved\" where the interval spans it)."]
    lines += ["", "Trend of the gap against log10(steps), per size and arm "
              "(least squares over the cells' mean gaps):", "",
              "| size | arm | gap per decade of steps | +- 1 s.e. | crossing at steps | range (slope +- 1 s.e.) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for size, entry in result["sizes"].items():
        for arm, fit in entry["fits"].items():
            if fit is None:
                continue
            rng = fit["crossing_range"] or [None, None]
            lines.append(f"| {size} | {arm} | {fit['slope_per_decade']:+.4f} | {number(fit['slope_se'], '.4f')} | "
                         f"{number(fit['crossing_steps'], ',.0f')} | "
                         f"{number(rng[0], ',.0f')} to {number(rng[1], ',.0f')} |")
    return "\n".join(lines + equal_loss_lines(result)) + "\n"


def equal_loss_lines(result: dict[str, Any]) -> list[str]:
    """Return the study's equal-loss table: each arm's speedup against the baselines at its length and longer."""
    rows = [(size, arm, n, r) for size, entry in result["sizes"].items()
            for arm, by_n in entry.get("equal_loss", {}).items() for n, r in by_n.items()]
    if not rows:
        return []
    lines = ["", "Compute to equal loss: the baseline compute that reaches TST's final val loss over TST's, read off "
             "the baselines at the same and every longer run length of the study (each its own run and schedule; "
             "non-increasing in compute, linear in log compute between them; bounded past either end):", "",
             "| size | arm | steps | baselines at (x TST's compute) | speedup | 95% interval | reading |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for size, arm, n, r in rows:
        speedup = (f"{r['speedup']:.2f}x" if r["speedup"] is not None else
                   f"more than {r['rungs'][-1]['multiple']:.2f}x" if r["bound"] == "above" else
                   f"less than {r['rungs'][0]['multiple']:.2f}x")
        ladder = ", ".join(format(g["multiple"], ".2f") for g in r["rungs"])
        lines.append(f"| {size} | {arm} | {n} | {ladder} | {speedup} | {interval_text(r['interval'], '.2f')} | "
                     f"{r['verdict']} |")
    return lines


def lr_lines(result: dict[str, Any]) -> list[str]:
    """Return the LR each size's baseline (and, tuned on their own, each arm) trained at, with the tuning runs'
    final val losses."""
    def tried(finals: dict[str, float]) -> str:
        return ", ".join(f"{lr}: {loss:.4f}" for lr, loss in finals.items())

    lines = []
    for size, entry in result["sizes"].items():
        if "lr_tuning" not in entry:
            continue
        line = f"- {size}: the baseline at LR {entry['lr']:g} (tuned over {tried(entry['lr_tuning'])})"
        for arm, lr in entry.get("arm_lrs", {}).items():
            line += f"; {arm} at its own LR {lr:g} (tuned over {tried(entry['arm_lr_tuning'][arm])})"
        lines.append(line + ".")
    if not lines:
        return []
    return ["LRs (the best final val loss of each LR's tuning run):", "", *lines, ""]


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
            values = [(n, cell_readings(c, arm)[1]) for n, c in zip(ns, cells.values())]
            values = [(n, v) for n, v in values if v.value is not None and v.interval and None not in v.interval]
            axes[1].errorbar([n for n, _ in values], [v.value for _, v in values], marker="o", capsize=3,
                             label=label, yerr=[[v.value - v.interval[0] for _, v in values],
                                                [v.interval[1] - v.value for _, v in values]])
            axes[2].plot([_mean(c, arm, "flops") for c in cells.values()],
                         [_mean(c, arm, "gap") for c in cells.values()], marker="o", label=label)
    for ax, (xlabel, ylabel, level) in zip(axes, [("steps", "TST minus baseline val loss (nats)", 0.0),
                                                   ("steps", "phase-1 step value (baseline steps)", 1.0),
                                                   ("training FLOPs", "TST minus baseline val loss (nats)", 0.0)]):
        if ax.has_data():  # a step value needs two evaluations before the decay: a tiny study may have none
            ax.set_xscale("log")
        ax.axhline(level, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "scale_gap.png")
    plt.close(fig)
    plot_course(result, out / "scale_step_value_course.png")


def plot_course(result: dict[str, Any], path: Path) -> None:
    """Write the phase-1 step value of each TST evaluation along the run, for each size's longest cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for size, entry in result["sizes"].items():
        n, cell = max(entry["cells"].items(), key=lambda kv: int(kv[0]))
        for arm in result["arms"]:
            for seed, figs in cell.items():
                course = [(t, v) for t, v in figs.get(arm, {}).get("phase1_step_value_course", []) if v is not None]
                ax.plot([t for t, _ in course], [v for _, v in course], marker=".", linewidth=1,
                        label=f"{size}, {n} steps, {arm}, seed {seed}")
    save_step_value_course(fig, ax, "phase-1 step value of one evaluation", path, 7)
