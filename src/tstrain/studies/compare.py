"""Baseline vs TST side by side, in the paper's three views: equal FLOPs, equal loss, equal data.

``compare`` trains the runs (skipping any already finished, so it resumes), then reads their
``metrics.jsonl`` and writes ``comparison.json``, ``report.md`` and PNG plots of next-token
validation loss against FLOPs, data tokens read and wall-clock time, with the switch marked.

By default both arms train at the config's LR (the paper's protocol: tuned on the baseline, reused
for TST). With ``baseline_lr`` the baseline trains at its own LR: the gaps between the runs as
trained keep their reading, but whatever reads the baseline's curve as what TST would have done
without phase 1 (the phase-1 step value, the spike at the switch) is reported as not comparable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..fileio import save_figure, write_text_atomic
from ..options import check
from ..run_lock import locked
from ..train.run_dir import read_summary
from .ladder import ladder_reading, plan_ladder, plot_ladder, training_order
from .plans import CompareOptions
from .plots import save_step_value_course
from .report_text import data_line, interval_text, json_text, number
from .runs import RunSpec, baseline_of, data_record, decay_start, equal_data_baseline, train_all, val_rows
from .statistics import (
    NOT_COMPARABLE,
    WALL_TOLERANCE,
    GapReading,
    StepValue,
    comparable,
    fit_curve,
    gap_reading,
    not_comparable_value,
    phase1_step_value,
    switch_figures,
    within_runs,
)


@dataclass(frozen=True)
class RunFigures:
    """One run of a comparison as it ended: its final val loss and what it cost."""

    final_val_loss: float
    steps: int
    data_tokens: int
    flops: float
    wall_time_s: float


@dataclass(frozen=True)
class Comparison:
    """What a comparison measured, in the paper's three views; ``to_dict`` is ``comparison.json``.

    ``lrs`` is set only where each arm ran at its own LR (``each_arm_at_its_own_lr``); ``equal_loss`` only with a
    ladder, ``switch`` only where both curves have a value at the switch, the equal-data figures only with
    that baseline; ``labels`` and ``data`` (``runs.data_record``) are what ``compare`` adds for its report."""

    switch_step: int
    runs: dict[str, RunFigures]
    eval_noise: float | None
    equal_flops_delta: float  # TST minus baseline final val loss: negative, TST is better
    equal_flops: GapReading
    equal_loss_within_runs: dict[str, Any]
    phase1_step_value_detail: StepValue
    lrs: dict[str, float] | None = None
    equal_loss: dict[str, Any] | None = None
    switch: dict[str, Any] | None = None
    equal_data_delta: float | None = None
    equal_data: GapReading | None = None
    labels: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] | None = None

    @property
    def each_arm_at_its_own_lr(self) -> bool:
        return self.lrs is not None

    @property
    def phase1_step_value(self) -> float | None:
        return self.phase1_step_value_detail.value

    def to_dict(self) -> dict[str, Any]:
        """Return the comparison as ``comparison.json`` holds it (a figure a comparison lacks is left out)."""
        out: dict[str, Any] = {"switch_step": self.switch_step,
                               "runs": {name: dataclasses.asdict(r) for name, r in self.runs.items()}}
        if self.lrs is not None:
            out |= {"lrs": self.lrs, "each_arm_at_its_own_lr": True}
        out |= {"eval_noise": self.eval_noise, "equal_flops_delta": self.equal_flops_delta,
                "equal_flops": self.equal_flops, "equal_loss_within_runs": self.equal_loss_within_runs}
        if self.equal_loss is not None:
            out["equal_loss"] = self.equal_loss
        if self.switch is not None:
            out["switch"] = self.switch
        out |= {"phase1_step_value": self.phase1_step_value, "phase1_step_value_detail": self.phase1_step_value_detail}
        if self.equal_data is not None:
            out |= {"equal_data_delta": self.equal_data_delta, "equal_data": self.equal_data}
        return out | {"labels": self.labels, "data": self.data}


def _variant_label(cfg: Config) -> str:
    """Return the TST settings that differ from the paper's default, for plot and report labels."""
    t, default = cfg.tst, type(cfg.tst)()
    parts = [f"{k}={getattr(t, k)}" for k in ("variant", "weights", "expand", "transition")
             if getattr(t, k) != getattr(default, k)]
    return (", " + ", ".join(parts)) if parts else ""


def plan_runs(cfg: Config, equal_data: bool = False, baseline_lr: float | None = None) -> list[RunSpec]:
    """Return the runs of a comparison: baseline and TST at equal steps (equal FLOPs), and
    optionally a baseline that reads as many tokens as TST does (equal data). With ``baseline_lr``
    (other than TST's ``optim.lr``) both baselines train at it, and every label names its run's LR."""
    if cfg.switch_step == 0:
        raise ConfigError("compare needs a TST run: give --bag-size > 1 and --ratio > 0 "
                          "(tst.bag_size and tst.ratio)")
    base = baseline_of(cfg, baseline_lr)
    eq = equal_data_baseline(cfg, baseline_lr) if equal_data else None
    own = not comparable(base.optim.lr, cfg.optim.lr)

    def lr(c: Config) -> str:
        return f", lr {c.optim.lr:g}" if own else ""

    s, r = cfg.tst.bag_size, cfg.tst.ratio
    runs = [
        RunSpec("baseline", f"baseline ({cfg.train.steps} steps{lr(base)})", base),
        RunSpec("tst", f"TST s={s} r={r}{_variant_label(cfg)} ({cfg.train.steps} steps{lr(cfg)})", cfg),
    ]
    if eq is not None:
        runs.append(RunSpec("baseline-equal-data", f"baseline, equal data ({eq.train.steps} steps{lr(eq)})", eq))
    return runs


def analyse(run_dirs: dict[str, Path], switch_step: int, decay: int, warmup: int = 0,
            lrs: dict[str, float] | None = None, ladder: dict[str, int] | None = None) -> Comparison:
    """Return the comparison figures from finished runs (``baseline``, ``tst``, optional
    ``baseline-equal-data`` and the ladder's rungs); ``decay`` is the first step of the LR decay, ``warmup``
    its warmup steps (the baseline's curve is fitted between the two, for the evaluation noise). ``lrs``
    (``baseline``, ``tst``) that differ mark a comparison where each arm ran at its own LR: its
    readings of the baseline's curve as TST's counterfactual are reported as not comparable. ``ladder``:
    the decay start of each rung of the baseline ladder by name (the baseline's included), read into
    ``equal_loss`` (``ladder.ladder_reading``)."""
    rows = {name: val_rows(d) for name, d in run_dirs.items()}
    summaries = {name: read_summary(d, "run the same command again to finish that run")
                 for name, d in run_dirs.items()}
    own_lrs = lrs is not None and not comparable(lrs["baseline"], lrs["tst"])
    base, tst = rows["baseline"], rows["tst"]
    runs = {name: RunFigures(r[-1]["val_loss"], summaries[name]["steps"], summaries[name]["data_tokens"],
                             summaries[name]["flops"], summaries[name]["wall_time"]) for name, r in rows.items()}
    fit = fit_curve(base, warmup, decay)
    noise = fit.noise if fit else None
    equal_flops = tst[-1]["val_loss"] - base[-1]["val_loss"]
    eq = rows.get("baseline-equal-data")
    equal_data = None if eq is None else tst[-1]["val_loss"] - eq[-1]["val_loss"]
    costs = [(runs[n].wall_time_s, runs[n].flops) for n in ("baseline", "tst")]
    return Comparison(
        switch_step, runs, noise, equal_flops, gap_reading([equal_flops], [noise]), within_runs(base, tst, costs),
        not_comparable_value() if own_lrs else phase1_step_value(base, tst, switch_step, decay, warmup),
        lrs={"baseline": lrs["baseline"], "tst": lrs["tst"]} if own_lrs else None,
        equal_loss=ladder_reading(rows, {n: r.flops for n, r in runs.items()}, {**ladder, "tst": decay}, list(ladder),
                                  noise) if ladder else None,
        switch=switch_figures(base, tst, switch_step, own_lrs), equal_data_delta=equal_data,
        equal_data=None if equal_data is None else gap_reading([equal_data], [noise]))


def report_markdown(result: Comparison, labels: dict[str, str], command: str) -> str:
    """Return report.md: the table of runs and the three views."""
    lines = ["# Baseline vs TST", "", f"Command: `{command}`", ""]
    if result.data:
        lines += [data_line(result.data), ""]
    lines += ["| run | steps | final val loss | data tokens | FLOPs | wall time (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in result.runs.items():
        lines.append(f"| {labels[name]} | {r.steps} | {r.final_val_loss:.4f} | {r.data_tokens:,} | "
                     f"{r.flops:.3e} | {r.wall_time_s:.0f} |")
    if result.lrs is not None:
        lines += ["", f"Each arm ran at its own LR: the baseline at {result.lrs['baseline']:g}, TST at "
                  f"{result.lrs['tst']:g}. The gaps below, and the equal-loss view (each arm's own curve against "
                  "the baseline's final val loss), compare the runs as trained; the readings of the baseline's "
                  "curve as what TST would have done without phase 1 (the phase-1 step value, the spike at the "
                  f"switch) are not comparable: {NOT_COMPARABLE}."]
    lines += ["", "## Equal FLOPs (same steps)", "",
              f"TST minus baseline final val loss: **{result.equal_flops_delta:+.4f}** nats "
              f"({gap_words(result.equal_flops, result.eval_noise)}).", ""]
    lines += equal_loss_lines(result)
    lines += phase1_value_lines(result.phase1_step_value_detail, result.switch_step)
    sw = result.switch
    if sw is not None and "not_comparable" in sw:
        lines += ["## The switch", "",
                  f"At step {result.switch_step} TST's next-token val loss is {sw['tst_val_loss_at_switch']:.4f}, "
                  f"the baseline's {sw['baseline_val_loss_at_switch']:.4f}. The spike against the baseline and the "
                  f"first evaluation below it: not comparable: {sw['not_comparable']}.", ""]
    elif sw is not None:
        lines += ["## The switch", "",
                  f"At step {result.switch_step} TST's next-token val loss is {sw['tst_val_loss_at_switch']:.4f} "
                  f"against the baseline's {sw['baseline_val_loss_at_switch']:.4f} at the same step (interpolated "
                  f"between its evaluations where needed): a spike of "
                  f"{sw['spike_vs_baseline']:+.4f} nats. " + _first_below(sw['first_eval_below_baseline_after_switch']),
                  ""]
    if result.equal_data is not None:
        lines += ["## Equal data", "",
                  f"TST minus the equal-data baseline's final val loss: **{result.equal_data_delta:+.4f}** nats "
                  f"({gap_words(result.equal_data, result.eval_noise)}).", ""]
    lines += reading_lines(result)
    lines += ["Plots: `val_loss_vs_flops.png`, `val_loss_vs_data_tokens.png`, `val_loss_vs_wall_time.png`"
              + (", `phase1_step_value.png`." if result.phase1_step_value_detail.course else "."), ""]
    return "\n".join(lines)


def _first_below(step: int | None) -> str:
    """Return the switch section's sentence on TST's first evaluation below the baseline after the switch."""
    if step is None:
        return ("No evaluation of TST after the switch is below the baseline's at the same step: TST's curve never "
                "went below the baseline's.")
    return f"TST's first evaluation below the baseline's at the same step after the switch: step {step}."


def _reached(x: float | None, spec: str, suffix: str = "") -> str:
    """Return a figure of the within-run equal-loss view ("not reached" where an arm's curve never got there)."""
    return number(x, spec, "not reached", suffix)


def equal_loss_lines(result: Comparison) -> list[str]:
    """Return report.md's equal-loss sections: the ladder's speedup (when measured) and the within-run view."""
    lines = []
    if result.equal_loss is not None:
        eq = result.equal_loss
        lines += ["## Equal loss: a ladder of baselines", "", eq["reading"], "",
                  "| run | steps | compute (x TST's) | final val loss |", "| --- | --- | --- | --- |"]
        lines += [f"| baseline | {g['steps']} | {g['multiple']:.2f} | {g['val_loss']:.4f} |" for g in eq["rungs"]]
        lines += [f"| TST | {eq['tst']['steps']} | 1.00 | {eq['tst']['val_loss']:.4f} |", "",
                  f"How: {eq['method']}. Noise of one final value: "
                  + (f"{eq['noise']:.4f} nats, from {eq['noise_from']}." if eq["noise"] is not None else "unknown.")
                  + " Plot: `equal_loss.png`.", ""]
    w = result.equal_loss_within_runs
    lines += ["## Equal loss within the runs", "",
              f"Where each arm's own curve first reaches the baseline's final val loss {w['target_val_loss']:.4f} "
              "(TST's curve read as it stands, through its LR decay).", "",
              "| | baseline | TST | speedup |", "| --- | --- | --- | --- |",
              f"| steps to reach it | {_reached(w['baseline_steps'], '.0f')} | {_reached(w['tst_steps'], '.0f')} | "
              f"{_reached(w['speedup_steps'], '.2f', 'x')} |"]
    if w["wall_time_comparable"]:
        lines.append(f"| wall time to reach it (s) | {_reached(w['baseline_time_s'], '.0f')} | "
                     f"{_reached(w['tst_time_s'], '.0f')} | {_reached(w['speedup_time'], '.2f', 'x')} |")
    elif w["wall_time_per_flop_ratio"] is not None:
        lines += ["", f"No wall-time speedup: the arms' seconds per FLOP differ {w['wall_time_per_flop_ratio']:.2f}x, "
                  f"beyond the {WALL_TOLERANCE:g}x their work explains, so the machine's load differed between the "
                  "runs and a wall-time ratio would measure that."]
    return lines + [""]


def gap_words(reading: GapReading, noise: float | None) -> str:
    """Return a gap's reading with its interval, e.g. "baseline better: 95% interval +0.008 to +0.117"."""
    if reading.interval is None:
        return ("noise unknown: the baseline has too few evaluations in its stable phase to estimate it "
                "(evaluate more often, train.eval_every)")
    return (f"{reading.reading}: 95% interval {interval_text(reading.interval, '+.3f')}, "
            f"evaluation noise {noise:.3f} nats "
            "on one evaluation")


def reading_lines(result: Comparison) -> list[str]:
    """Return report.md's plain reading: does TST pay in these runs, beyond the noise, and which runs would say more
    if it does not. What other runs found belongs in docs/results.md, not in a report of these."""
    gap, reading = result.equal_flops_delta, result.equal_flops
    detail = result.phase1_step_value_detail
    bought = "" if detail.value is None else (f" A phase-1 step bought {detail.value:.2f} baseline steps "
                                                 f"({detail.reading}).")
    own_lr = result.each_arm_at_its_own_lr
    tune = ("These runs measured one LR per arm; to tune TST's on its own, "
            + ("try other `--lr` values against this baseline, or `tstrain scale --lrs ... --tune-arms`, which "
               "tunes both arms over one grid. " if own_lr else
               "run other `--lr` values with `--baseline-lr` at this one. "))
    small_scale = (tune + "`tstrain scale` measures how the gap and the phase-1 step value move with run length and "
                   "model size.")
    words = gap_words(reading, result.eval_noise)
    at = "at equal FLOPs" + (", each arm at its own LR" if own_lr else "")
    if reading.reading == "TST better":
        verdict = (f"TST ends {-gap:.3f} nats below the baseline {at} ({words}): here it saves compute."
                   f"{bought} Check that the win holds on a second seed (`--seed 1`) before relying on it.")
    elif reading.reading == "baseline better":
        verdict = (f"TST ends {gap:.3f} nats above the baseline {at} ({words}): here it costs compute."
                   f"{bought} {small_scale}")
    else:
        verdict = (f"TST ends {gap:+.3f} nats from the baseline {at} ({words}): not resolved, neither a "
                   f"saving nor a cost.{bought} A second seed (`--seed 1`) or a longer run would say more.")
    return ["## Reading", "", verdict, ""]


def phase1_value_lines(detail: StepValue, switch: int) -> list[str]:
    """Return report.md's section on what a phase-1 step buys: the value, its interval and its course."""
    lines = ["## What a phase-1 step buys", ""]
    if detail.value is None:
        what = "Not comparable" if detail.reading == "not comparable" else "Not measured"
        return lines + [f"{what}: {detail.reason}.", ""]
    fit, steps = detail.fit, detail.steps
    t = detail.at_step
    extrapolated = " (extrapolated)" if detail.extrapolated else ""
    lines += [
        f"Phase-1 step value: **{detail.value:.2f}** baseline steps per phase-1 step (95% interval "
        f"{interval_text(detail.interval, '.2f')}: {detail.reading}). Over its last {len(steps)} evaluations "
        f"before the LR decay (steps {steps[0]}-{steps[-1]}) TST's mean val loss {detail.level:.4f} is where the "
        f"baseline's fitted curve stands at step {detail.baseline_step:.0f}{extrapolated}; "
        f"less TST's {t - switch:.0f} phase-2 steps, its {switch} phase-1 steps bought "
        f"{detail.baseline_step - (t - switch):.0f} baseline steps. 1.00 is break-even at equal FLOPs, above 1 "
        "TST saves compute, 0 means phase 1 bought nothing.", "",
        f"The baseline's curve: {fit['a']:.3f} + {fit['b']:.3g} * step^-{fit['c']:.3f}, fitted to its {fit['evals']} "
        f"evaluations from step {fit['first']} to {fit['last']}; their scatter about it, {fit['noise']:.4f} nats, is "
        "the evaluation noise behind every interval here.", ""]
    course = [p for p in detail.course if p["value"] is not None]
    if course:
        picks = [course[round(i * (len(course) - 1) / 4)] for i in range(5)] if len(course) > 5 else course
        lines += ["Along the run (one evaluation each, so wider intervals; plotted in `phase1_step_value.png`): "
                  + "; ".join(f"step {p['step']}: {p['value']:.2f} ({interval_text(p['interval'], '.2f')})"
                              for p in picks) + ".", ""]
    return lines


def plot_step_value(detail: StepValue, path: Path) -> None:
    """Write the phase-1 step value of each TST evaluation in phase 2 against its step, with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    course = [p for p in detail.course if p["value"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [p["step"] for p in course]
    lows = [-5.0 if p["interval"][0] is None else max(p["interval"][0], -5.0) for p in course]
    highs = [5.0 if p["interval"][1] is None else min(p["interval"][1], 5.0) for p in course]
    ax.fill_between(steps, lows, highs, alpha=0.25, label="95% interval (clipped to -5..5)")
    ax.plot(steps, [p["value"] for p in course], marker=".", label="one evaluation")
    if detail.value is not None:
        lo, hi = (5.0 if x is None else min(max(x, -5.0), 5.0) for x in detail.interval)
        ax.errorbar([detail.at_step], [detail.value], fmt="o", color="black",
                    yerr=[[max(detail.value - lo, 0.0)], [max(hi - detail.value, 0.0)]],
                    label=f"mean of the last {len(detail.steps)}")
    save_step_value_course(fig, ax, "phase-1 step value (baseline steps)", path, 8)


def plot(run_dirs: dict[str, Path], labels: dict[str, str], switch_step: int, out: Path) -> list[Path]:
    """Write val loss against FLOPs, data tokens and wall time; return the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {name: val_rows(d) for name, d in run_dirs.items()}
    paths = []
    for key, xlabel, fname in [("flops", "training FLOPs", "val_loss_vs_flops.png"),
                               ("data_tokens", "data tokens read", "val_loss_vs_data_tokens.png"),
                               ("wall_time", "wall-clock time (s)", "val_loss_vs_wall_time.png")]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, r in rows.items():
            r = [x for x in r if x["step"] > 0]
            ax.plot([x[key] for x in r], [x["val_loss"] for x in r], marker=".", label=labels[name])
            if name == "tst":
                sw = [x for x in r if x["step"] == switch_step]
                if sw:
                    ax.axvline(sw[0][key], color="grey", linestyle="--", linewidth=1)
                    ax.annotate("switch", (sw[0][key], sw[0]["val_loss"]), textcoords="offset points", xytext=(4, 8))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("next-token validation loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / fname
        save_figure(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def compare(cfg: Config, out_dir: str | Path, options: CompareOptions | None = None) -> Comparison:
    """Train (or reuse) the runs of a comparison and write report.md, comparison.json and plots.

    ``options`` (``plans.CompareOptions``): the equal-data baseline, the baseline's own LR (TST trains at
    ``cfg.optim.lr``), the ladder (multiples of the steps at which the baseline is trained too, for the equal-loss
    speedup: one trunk with a decay branched off at each rung's decay start, ``ladder.training_order``) and the
    command report.md names."""
    o = options or CompareOptions()
    check(o, ConfigError)
    runs = plan_runs(cfg, o.equal_data, o.baseline_lr)  # refuses a config without TST before anything is written
    rungs = plan_ladder(runs[0].config, o.ladder) if o.ladder is not None else []
    order = [*runs[1:], *training_order([runs[0], *rungs])] if rungs else runs  # the baseline: the rung at 1x
    with locked(out_dir, "comparison dir") as out:
        train_all(order, out)
        dirs = {spec.name: out / spec.name for spec in [*runs, *rungs]}
        labels = {s.name: s.label for s in [*runs, *rungs]}
        decays = {"baseline": decay_start(cfg)} | {r.name: decay_start(r.config) for r in rungs}
        result = dataclasses.replace(
            analyse(dirs, cfg.switch_step, decay_start(cfg), cfg.optim.warmup_steps,
                    {"baseline": runs[0].config.optim.lr, "tst": cfg.optim.lr}, decays if rungs else None),
            labels=labels, data=data_record(cfg.data.path))
        report = report_markdown(result, labels, o.command)
        write_text_atomic(out / "comparison.json", json_text(result))
        write_text_atomic(out / "report.md", report)
        plot(dirs, labels, cfg.switch_step, out)
        _plot_or_remove(plot_ladder, result.equal_loss, out / "equal_loss.png")
        detail = result.phase1_step_value_detail
        _plot_or_remove(plot_step_value, detail if detail.course else None, out / "phase1_step_value.png")
        return result


def _plot_or_remove(draw, what: dict[str, Any] | None, path: Path) -> None:
    """Draw ``what`` into ``path``, or remove an earlier report's plot there (it would be read as this one's)."""
    if what is None:
        path.unlink(missing_ok=True)
    else:
        draw(what, path)
