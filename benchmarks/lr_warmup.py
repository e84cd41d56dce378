"""Read an LR x warmup grid of scale cells two ways, with the noise-aware readings.

Each cell is one ``tstrain scale`` study dir, ``ROOT/lr{LR}-w{WARMUP}/``, made with
``--set optim.lr=LR --set optim.warmup_steps=WARMUP`` (one size, one run length, the baseline and
the TST arms). Prints markdown:

- every run's final val loss;
- the paper's protocol: the baseline's best (LR, warmup) used by every arm;
- each arm at its own best (LR, warmup) against the baseline at its best (the phase-1 step
  value is given only within one setting: the stable phases of two LRs stand at different levels,
  so one curve read against the other's says nothing about phase 1).

Gaps are read against the evaluation noise of the baseline's fitted curve (and the seed spread
with two seeds or more), phase-1 step values against the baseline's fitted curve, both with 95%
intervals (``tstrain.studies``). Nothing is trained.

    python benchmarks/lr_warmup.py ROOT [SIZE] [STEPS]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tstrain.config import load_config
from tstrain.studies.report_text import interval_text, number, value_text
from tstrain.studies.runs import decay_start, val_rows
from tstrain.studies.statistics import (
    GapReading,
    ValueSummary,
    fit_curve,
    gap_reading,
    phase1_step_value,
    value_summary,
)


def load_runs(root: Path, size: str, steps: int) -> dict[tuple[float, int], dict[str, dict[str, Any]]]:
    """Return ``{(lr, warmup): {seed: {run name: {dir, cfg, final}}}}`` for every finished run; a cell's
    setting is its baselines' (a seed may lack its baseline: a second seed of one arm only)."""
    cells: dict[tuple[float, int], dict[str, dict[str, Any]]] = {}
    for cell_dir in sorted(root.glob("lr*-w*")):
        seeds = {}
        for seed_dir in sorted((cell_dir / size / f"steps{steps}").glob("seed*")):
            runs = {}
            for run in sorted(seed_dir.iterdir()):
                if (run / "summary.json").is_file():
                    cfg = load_config(config_file=run / "config.toml")
                    runs[run.name] = {"dir": run, "cfg": cfg,
                                      "final": json.loads((run / "summary.json").read_text())["final_val_loss"]}
            if runs:
                seeds[seed_dir.name.removeprefix("seed")] = runs
        base = next((runs["baseline"]["cfg"] for runs in seeds.values() if "baseline" in runs), None)
        if base is not None:
            cells.setdefault((base.optim.lr, base.optim.warmup_steps), {}).update(seeds)
    return cells


def noise_of(run: dict[str, Any]) -> float | None:
    cfg = run["cfg"]
    fit = fit_curve(val_rows(run["dir"]), cfg.optim.warmup_steps, decay_start(cfg))
    return fit.noise if fit else None


def mean_final(cell: dict[str, dict[str, Any]], name: str, seeds: set[str] | None = None) -> float | None:
    """Return run ``name``'s mean final val loss over ``seeds`` (every seed it ran, by default)."""
    finals = [runs[name]["final"] for s, runs in cell.items() if name in runs and (seeds is None or s in seeds)]
    return sum(finals) / len(finals) if finals else None


Cells = dict[tuple[float, int], dict[str, dict[str, Any]]]


def best_setting(cells: Cells, name: str) -> tuple[tuple[float, int], list[str]]:
    """Return the setting where run ``name`` ends lowest and the seeds that decided it: the seeds every
    setting ran, so that a setting with one lucky seed does not beat one with two; all seeds where no seed
    is shared."""
    ran = {k: {s for s, runs in c.items() if name in runs} for k, c in cells.items()}
    ran = {k: seeds for k, seeds in ran.items() if seeds}
    shared = set.intersection(*ran.values())
    best = min(ran, key=lambda key: mean_final(cells[key], name, shared or None))
    return best, sorted(shared or ran[best])


def seed_gaps(base_cell: dict[str, dict[str, Any]], arm_cell: dict[str, dict[str, Any]],
              arm: str) -> tuple[list[str], list[float], GapReading | None]:
    """Return the seeds both cells ran, ``arm`` minus the baseline's final val loss on each, and their
    ``gap_reading`` (None without a shared seed)."""
    seeds = [s for s in arm_cell if arm in arm_cell[s] and "baseline" in base_cell.get(s, {})]
    gaps = [arm_cell[s][arm]["final"] - base_cell[s]["baseline"]["final"] for s in seeds]
    return seeds, gaps, gap_reading(gaps, [noise_of(base_cell[s]["baseline"]) for s in seeds]) if seeds else None


def step_value(cell: dict[str, dict[str, Any]], arm: str) -> ValueSummary:
    """Return the ``value_summary`` of ``arm``'s phase-1 step value against the baseline of the same cell."""
    values = []
    for runs in cell.values():
        if arm in runs and "baseline" in runs:
            base, tst = runs["baseline"], runs[arm]
            values.append(phase1_step_value(val_rows(base["dir"]), val_rows(tst["dir"]), tst["cfg"].switch_step,
                                            decay_start(base["cfg"]), base["cfg"].optim.warmup_steps))
    return value_summary(values)


def reading(base_cell: dict[str, dict[str, Any]], arm_cell: dict[str, dict[str, Any]], arm: str) -> str:
    """Return one table row's gap and phase-1 step value of ``arm`` (from ``arm_cell``) against the
    baseline of ``base_cell``, seed by seed where both have the seed."""
    seeds, gaps, g = seed_gaps(base_cell, arm_cell, arm)
    if not seeds:
        return "| n/a | | | |"
    head = (f"| {', '.join(f'{x:+.4f}' for x in gaps)} | {interval_text(g.interval, '+.3f')} | "
            f"{g.reading} (seeds {', '.join(seeds)}) ")
    if base_cell is not arm_cell:  # the stable phases of two LRs stand at different levels
        return head + "| not comparable across settings |"
    return head + f"| {value_text(step_value(arm_cell, arm))} |"


def gap_course(cell: dict[str, dict[str, Any]], arm: str, steps: int, points: int = 10, window: int = 10) -> str:
    """Return one table row per seed: ``arm`` minus the baseline of the same setting at ``points`` steps
    along the run, each the mean over the last ``window`` evaluations both runs made up to that step."""
    rows = []
    for seed, runs in sorted(cell.items()):
        if arm not in runs or "baseline" not in runs:
            continue
        base = {r["step"]: r["val_loss"] for r in val_rows(runs["baseline"]["dir"])}
        diffs = sorted((r["step"], r["val_loss"] - base[r["step"]]) for r in val_rows(runs[arm]["dir"])
                       if r["step"] in base)
        cells = []
        for k in range(1, points + 1):
            upto = [d for s, d in diffs if s <= steps * k // points][-window:]
            cells.append(f"{sum(upto) / len(upto):+.3f}" if upto else "n/a")
        rows.append(f"| {arm} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def label(key: tuple[float, int]) -> str:
    return f"lr {key[0]:g}, warmup {key[1]}"


def finals_table(cells: Cells, arms: list[str], size: str, steps: int) -> list[str]:
    """Return the table of every run's final val loss, one row per setting and seed."""
    lines = [f"Every run's final val loss ({size}, {steps} steps):", "",
             "| LR | warmup | seed | baseline | " + " | ".join(arms) + " | eval noise (baseline) |",
             "| --- | --- | --- | --- | " + "--- | " * len(arms) + "--- |"]
    for key, cell in sorted(cells.items()):
        for seed, runs in sorted(cell.items()):
            finals = " | ".join(f"{runs[a]['final']:.4f}" if a in runs else "not run" for a in ["baseline", *arms])
            noise = noise_of(runs["baseline"]) if "baseline" in runs else None
            lines.append(f"| {key[0]:g} | {key[1]} | {seed} | {finals} | "
                         f"{number(noise, '.4f')} |")
    return lines


def baselines_table(cells: Cells) -> tuple[tuple[float, int], list[str]]:
    """Return the baseline's best setting and the table of every other baseline against it, seed by seed."""
    best, by = best_setting(cells, "baseline")
    lines = ["", f"The baseline's best setting: {label(best)} (mean final {mean_final(cells[best], 'baseline'):.4f}; "
             f"chosen on seeds {', '.join(by)}, the seeds every setting ran). Other baselines against it:", "",
             "| setting | baseline minus the best baseline (seeds) | 95% interval | reading |",
             "| --- | --- | --- | --- |"]
    within = {"baseline better": "worse, beyond the noise", "TST better": "better, beyond the noise"}
    for key, cell in sorted(cells.items()):
        seeds, gaps, g = seed_gaps(cells[best], cell, "baseline")
        if key != best and seeds:
            lines.append(f"| {label(key)} | {', '.join(f'{x:+.4f}' for x in gaps)} | "
                         f"{interval_text(g.interval, '+.3f')} | {within.get(g.reading, g.reading)} |")
    return best, lines


def gap_tables(cells: Cells, arms: list[str], best: tuple[float, int]) -> list[str]:
    """Return the three gap tables: the paper's protocol, each arm at its own best, each at every setting."""
    header = ["| arm | setting | gap (seeds) | gap 95% interval | reading | phase-1 step value (95% interval) |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines = ["", f"The paper's protocol: every arm at the baseline's best setting ({label(best)}):", "", *header]
    lines += [f"| {arm} | {label(best)} " + reading(cells[best], cells[best], arm) for arm in arms]
    lines += ["", f"Each arm at its own best setting, against the baseline at its best ({label(best)}):", "", *header]
    for arm in arms:
        own, _ = best_setting(cells, arm)
        lines.append(f"| {arm} | {label(own)} " + reading(cells[best], cells[own], arm))
    lines += ["", "Each arm against the baseline of the same setting:", "", *header]
    lines += [f"| {arm} | {label(key)} " + reading(cell, cell, arm)
              for key, cell in sorted(cells.items()) for arm in arms]
    return lines


def report(root: Path, size: str, steps: int) -> str:
    cells = load_runs(root, size, steps)
    arms = sorted({n for c in cells.values() for runs in c.values() for n in runs if n != "baseline"}, reverse=True)
    best, baselines = baselines_table(cells)
    lines = finals_table(cells, arms, size, steps) + baselines + gap_tables(cells, arms, best)
    marks = [steps * k // 10 for k in range(1, 11)]
    for key, cell in sorted(cells.items()):
        lines += ["", f"The gap along the run at {label(key)}: TST minus the baseline of the same setting, the mean of "
                  "the last 10 evaluations up to each step (the LR decays over the last 20%):", "",
                  "| arm | seed | " + " | ".join(f"{m:,}" for m in marks) + " |",
                  ("| --- | --- | " + "--- | " * len(marks)).rstrip()]
        lines += [row for arm in arms if (row := gap_course(cell, arm, steps))]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    size = argv[1] if len(argv) > 1 else "cpu-micro"
    steps = int(argv[2]) if len(argv) > 2 else 6000
    if not load_runs(Path(argv[0]), size, steps):
        print(f"lr_warmup.py: no finished run of {size} at {steps} steps under {argv[0]} "
              "(expected ROOT/lr*-w*/SIZE/stepsN/seedK/baseline); check the size name and the steps", file=sys.stderr)
        return 2
    print(report(Path(argv[0]), size, steps), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
