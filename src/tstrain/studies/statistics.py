"""The numbers every experiment reads off val-loss curves: interpolation, the power-law fit of a baseline's
stable phase and its evaluation noise, gaps and phase-1 step values with their 95% intervals, and what
each interval says (its reading); where each arm's own curve reaches the baseline's final loss, and the curves
at the switch. Numpy only: nothing here trains or writes.

One noise model feeds every reading. The baseline's stable phase (after twice the warmup, before
the LR decay) is fitted by a power law in steps, ``loss = a + b * step**-c``; the scatter of its
evaluations about the fit is the evaluation noise, taken to be the same for every run of the
comparison. With two seeds or more the seed spread is added. A gap, or a phase-1 step value, is
read as a win or a loss only when its 95% interval excludes the threshold (0 nats, or break-even);
otherwise it is "within noise" / "not resolved".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def first_reaching(rows: list[dict[str, Any]], target: float, key: str) -> float | None:
    """Return ``key`` (step, wall_time, ...) where val loss first reaches ``target``, linearly
    interpolated between the two evaluations around the crossing; None if never reached."""
    prev = None
    for row in rows:
        if row["val_loss"] <= target:
            if prev is None or prev["val_loss"] == row["val_loss"]:
                return float(row[key])
            frac = (prev["val_loss"] - target) / (prev["val_loss"] - row["val_loss"])
            return float(prev[key] + frac * (row[key] - prev[key]))
        prev = row
    return None


def value_at(rows: list[dict[str, Any]], step: int) -> float | None:
    """Return the val loss at ``step``, linearly interpolated between evaluations; None outside."""
    for a, b in zip(rows, rows[1:]):
        if a["step"] <= step <= b["step"]:
            if b["step"] == a["step"]:
                return float(a["val_loss"])
            frac = (step - a["step"]) / (b["step"] - a["step"])
            return float(a["val_loss"] + frac * (b["val_loss"] - a["val_loss"]))
    return None


Z95 = 1.96  # two-sided 95% for a normal error
EXPONENTS = np.geomspace(0.02, 4.0, 160)  # the power law's c, searched on a grid (the rest is linear)
MIN_FIT_EVALS = 5  # three parameters and at least two degrees of freedom for the noise


@dataclass(frozen=True)
class CurveFit:
    """``loss = a + b * step**-c`` fitted to a baseline's stable phase, with the scatter about it."""

    a: float
    b: float
    c: float
    noise: float  # residual standard deviation of one evaluation (nats)
    first: int  # the fitted steps
    last: int
    evals: int

    def loss(self, step: float) -> float:
        return self.a + self.b * step ** -self.c

    def step_of(self, loss: float) -> float | None:
        """Return the step where the fitted curve reaches ``loss``; None if it never does."""
        if self.b <= 0 or loss <= self.a:
            return None
        return ((loss - self.a) / self.b) ** (-1.0 / self.c)


def _best_fits(steps: np.ndarray, losses: np.ndarray, exponents: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return least-squares ``(a, b, c, rss)`` per row of ``losses`` ``(m, n)``, c from that row's ``exponents``
    ``(m, k)``: for a fixed c the fit is linear in (a, b), solved in closed form. Only falling curves
    (b > 0) are accepted when any c gives one."""
    x = steps[None, None, :] ** -exponents[:, :, None]  # (m, k, n)
    xc = x - x.mean(axis=2, keepdims=True)
    yc = losses - losses.mean(axis=1, keepdims=True)
    sxx = (xc ** 2).sum(axis=2)  # (m, k)
    sxy = np.einsum("mkn,mn->mk", xc, yc)
    slope = sxy / sxx
    rss = (yc ** 2).sum(axis=1, keepdims=True) - sxy ** 2 / sxx
    rss = np.where((slope > 0) | ~(slope > 0).any(axis=1, keepdims=True), rss, np.inf)
    j = rss.argmin(axis=1)
    rows = np.arange(losses.shape[0])
    b = slope[rows, j]
    a = losses.mean(axis=1) - b * x.mean(axis=2)[rows, j]
    return a, b, exponents[rows, j], np.maximum(rss[rows, j], 0.0)


def _fit_power_laws(steps: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return least-squares ``(a, b, c, rss)`` of ``loss = a + b * step**-c`` for each row of ``losses`` ``(m, n)``.

    c is searched on the coarse grid ``EXPONENTS``, then on a fine one around each row's best.
    """
    m = losses.shape[0]
    _, _, c, _ = _best_fits(steps, losses, np.broadcast_to(EXPONENTS, (m, len(EXPONENTS))))
    step = EXPONENTS[1] / EXPONENTS[0]
    fine = c[:, None] * step ** np.linspace(-1.0, 1.0, 41)[None, :]
    return _best_fits(steps, losses, fine)


def stable_rows(rows: list[dict[str, Any]], warmup: int, decay: int) -> list[dict[str, Any]]:
    """Return the evaluations of a run's stable LR phase: from twice the warmup to the decay's start."""
    return [r for r in rows if max(2 * warmup, 1) <= r["step"] <= decay]


def fit_curve(rows: list[dict[str, Any]], warmup: int, decay: int) -> CurveFit | None:
    """Return the power-law fit of a run's stable phase and its evaluation noise; None with too few evaluations."""
    stable = stable_rows(rows, warmup, decay)
    if len(stable) < MIN_FIT_EVALS:
        return None
    t = np.array([r["step"] for r in stable], dtype=float)
    y = np.array([r["val_loss"] for r in stable], dtype=float)
    a, b, c, rss = _fit_power_laws(t, y[None, :])
    return CurveFit(float(a[0]), float(b[0]), float(c[0]), math.sqrt(float(rss[0]) / (len(t) - 3)),
                    int(t[0]), int(t[-1]), len(t))


def _steps_of(a: np.ndarray, b: np.ndarray, c: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Return each fitted curve's step at ``loss`` (vectorised ``CurveFit.step_of``; inf where never reached)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        step = ((loss - a) / b) ** (-1.0 / c)
    return np.where((b > 0) & (loss > a), step, np.inf)


def _interval(draws: np.ndarray) -> list[float | None]:
    """Return the central 95% of ``draws``; an end is None (unbounded) where draws run off the fitted curve."""
    lo, hi = np.quantile(draws, [0.025, 0.975], method="inverted_cdf")
    return [float(x) if math.isfinite(x) else None for x in (lo, hi)]


def value_reading(interval: list[float | None] | None, threshold: float = 1.0) -> str:
    """Return what a phase-1 step value's interval says against break-even (1 baseline step per step)."""
    if interval is None:
        return "not measured"
    lo, hi = (math.inf if x is None else x for x in interval)
    if lo > threshold:
        return "saves compute"
    if hi < threshold:
        return "costs compute"
    return "not resolved"


def gap_reading_of(interval: list[float] | None) -> str:
    """Return what an equal-FLOPs gap's interval (TST minus baseline) says."""
    if interval is None:
        return "noise unknown"
    if interval[1] < 0:
        return "TST better"
    if interval[0] > 0:
        return "baseline better"
    return "within noise"


def combine(values: list[float], errors: list[float | None]) -> dict[str, Any]:
    """Return the mean of per-seed ``values``, its standard error and 95% interval.

    The error adds each seed's own standard error (from the evaluation noise) to the spread between
    seeds, ``sqrt((mean err^2 + var) / n)``: with one seed the evaluation noise alone, with more the
    spread too, so two seeds that disagree widen the interval. None when one seed has no error.
    """
    n = len(values)
    mean = sum(values) / n
    known = [e for e in errors if e is not None and math.isfinite(e)]
    if n == 1 and not known:
        return {"mean": mean, "se": None, "interval": None, "seeds": n}
    spread = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    own = sum(e * e for e in known) / len(known) if known else 0.0
    se = math.sqrt((own + spread) / n)
    return {"mean": mean, "se": se, "interval": [mean - Z95 * se, mean + Z95 * se], "seeds": n}


@dataclass(frozen=True)
class GapReading:
    """A gap over seeds (TST minus baseline final val loss) with its standard error, 95% interval and reading;
    ``se`` and ``interval`` are None where the noise is unknown. Written to a report's JSON as its fields."""

    gap: float
    se: float | None
    interval: list[float] | None
    seeds: int
    reading: str


def gap_reading(gaps: list[float], noises: list[float | None]) -> GapReading:
    """Return the equal-FLOPs gap over seeds (TST minus baseline final val loss) with its interval and reading.

    ``noises`` are each seed's evaluation noise (``CurveFit.noise``); a gap of two final evaluations
    has ``sqrt(2)`` times it. The noise is measured in the stable phase, so it is conservative for
    the final evaluation, taken after the LR decay.
    """
    g = combine(gaps, [None if n is None else math.sqrt(2.0) * n for n in noises])
    return GapReading(g["mean"], g["se"], g["interval"], g["seeds"], gap_reading_of(g["interval"]))


def comparable(baseline_lr: float, tst_lr: float) -> bool:
    """Return whether TST's curve may be read against the baseline's as what TST would have done without phase 1
    (the phase-1 step value, the spike at the switch): only when both arms ran at one LR, since the stable phases
    of two LRs stand at different levels. Gaps between the runs as trained keep their reading either way."""
    return baseline_lr == tst_lr


# What a reading of the baseline's curve as TST's counterfactual says when the arms ran at different LRs.
NOT_COMPARABLE = "the arms ran at different LRs (the baseline's stable phase stands at another level)"


@dataclass(frozen=True)
class StepValue:
    """What one phase-1 step bought, in baseline steps, for one TST run against its baseline (``phase1_step_value``):
    ``value`` with its 95% interval and reading, or None with the ``reason``; ``course`` one point per evaluation;
    where the baseline's curve was fitted (``fit``), the ``level`` TST stands at over its last ``steps`` (mean step
    ``at_step``) and the ``baseline_step`` where the fitted curve stands there."""

    value: float | None
    interval: list[float | None] | None
    reading: str
    reason: str | None = None
    course: list[dict[str, Any]] = field(default_factory=list)
    k: int | None = None  # the evaluations averaged; None where no reading was tried (the arms are not comparable)
    fit: dict[str, Any] | None = None
    extrapolated: bool = False
    level: float | None = None
    at_step: float | None = None
    steps: list[int] | None = None
    baseline_step: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record a report's JSON holds: ``k`` only where a reading was tried, and the level, its steps
        and the baseline's step only where the baseline's curve was fitted."""
        record = asdict(self)
        if self.k is None:
            del record["k"]
        if self.fit is None:
            for key in ("level", "at_step", "steps", "baseline_step"):
                del record[key]
        return record


def not_comparable_value() -> StepValue:
    """Return the phase-1 step value of a comparison whose arms ran at different LRs: no figure, since the
    baseline's curve is not what TST would have done without phase 1."""
    return StepValue(None, None, "not comparable", NOT_COMPARABLE)


@dataclass(frozen=True)
class ValueSummary:
    """The phase-1 step value over seeds with its 95% interval (an end None where it is unbounded) and reading.
    ``value`` is None where it was not measured, not comparable, or, with ``beyond_asymptote``, where TST
    ends below the baseline's fitted asymptote (worth more than any number of baseline steps)."""

    value: float | None
    interval: list[float | None] | None
    seeds: int
    reading: str
    beyond_asymptote: bool = False


def value_summary(values: list[StepValue]) -> ValueSummary:
    """Return the phase-1 step value over seeds (each a ``phase1_step_value`` result) with interval and reading."""
    measured = [v for v in values if v.value is not None]
    beyond = [v for v in values if v.value is None and v.interval]  # below the baseline's asymptote
    if not measured and beyond:
        lo = min(math.inf if v.interval[0] is None else v.interval[0] for v in beyond)
        interval = [None if math.isinf(lo) else lo, None]
        return ValueSummary(None, interval, len(beyond), value_reading(interval), beyond_asymptote=True)
    if not measured:
        comparable = not values or any(v.reading != "not comparable" for v in values)
        return ValueSummary(None, None, 0, "not measured" if comparable else "not comparable")
    if len(measured) == 1:
        v = measured[0]
        return ValueSummary(v.value, v.interval, 1, v.reading)
    ses = [(v.interval[1] - v.interval[0]) / (2 * Z95) if v.interval and None not in v.interval else None
           for v in measured]
    c = combine([v.value for v in measured], ses)
    return ValueSummary(c["mean"], c["interval"], c["seeds"], value_reading(c["interval"]))


def _bootstrap(rows: list[dict[str, Any]], fit: CurveFit, draws: int,
               rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Return ``draws`` refits ``(a, b, c)`` of the baseline's stable phase, redrawn about ``fit`` with its noise."""
    stable = [r for r in rows if fit.first <= r["step"] <= fit.last]
    t = np.array([r["step"] for r in stable], dtype=float)
    y = np.array([fit.loss(s) for s in t])[None, :] + fit.noise * rng.standard_normal((draws, len(t)))
    a, b, c, _ = _fit_power_laws(t, y)
    return a, b, c


def _value_point(fit: CurveFit, boot: tuple[np.ndarray, ...], step: float, level: float, n: int, switch: int,
                 rng: np.random.Generator) -> dict[str, Any]:
    """Return the phase-1 step value of TST standing at ``level`` (a mean of ``n`` evaluations) at ``step``."""
    b = fit.step_of(level)
    levels = level + fit.noise / math.sqrt(n) * rng.standard_normal(len(boot[0]))
    draws = (_steps_of(*boot, levels) - (step - switch)) / switch
    return {"step": step, "val_loss": level, "baseline_step": b,
            "value": None if b is None else (b - (step - switch)) / switch, "interval": _interval(draws)}


def phase1_step_value(base: list[dict[str, Any]], tst: list[dict[str, Any]], switch: int, decay: int,
                      warmup: int = 0, k: int = 5, draws: int = 400) -> StepValue:
    """Return what one phase-1 step buys, in baseline steps, with its 95% interval and its course along the run.

    TST's level is the mean of its last ``k`` evaluations in phase 2 before the LR decay, at their
    mean step ``t``; ``b`` is the step where the baseline's fitted stable-phase curve (``fit_curve``)
    has that level. The value is ``(b - (t - switch)) / switch``: 1.0 is break-even at equal FLOPs,
    above 1 TST saves compute, 0 means phase 1 bought nothing. A fitted curve, not the raw one,
    because the raw curve's first crossing of a level lands early by the evaluation noise. The
    interval refits the baseline and redraws TST's level under the evaluation noise (a parametric
    bootstrap, fixed seed); "not resolved" where it spans break-even. ``course`` is the value of
    each single evaluation, to show how it moves along the run.
    """
    evals = [r for r in tst if switch < r["step"] <= decay]
    fit = fit_curve(base, warmup, decay)
    reason = _unmeasured(base, evals, fit, switch, decay, warmup)
    if reason:
        return StepValue(None, None, "not measured", reason, k=k)
    rng = np.random.default_rng(0)
    boot = _bootstrap(base, fit, draws, rng)
    course = [_value_point(fit, boot, r["step"], r["val_loss"], 1, switch, rng) for r in evals]
    last = evals[-k:]
    at = sum(r["step"] for r in last) / len(last)
    head = _value_point(fit, boot, at, sum(r["val_loss"] for r in last) / len(last), len(last), switch, rng)
    reason = None if head["value"] is not None else (
        f"TST's mean val loss {head['val_loss']:.4f} over steps {last[0]['step']}-{last[-1]['step']} "
        f"is below the baseline's fitted asymptote {fit.a:.4f}: a phase-1 step is worth more than "
        "any number of baseline steps on this fit")
    return StepValue(head["value"], head["interval"], value_reading(head["interval"]), reason, course, k,
                     fit.__dict__.copy(), head["value"] is not None and head["baseline_step"] > fit.last,
                     head["val_loss"], at, [r["step"] for r in last], head["baseline_step"])


def _unmeasured(base: list[dict[str, Any]], evals: list[dict[str, Any]], fit: CurveFit | None, switch: int,
                decay: int, warmup: int) -> str | None:
    """Return why a phase-1 step value cannot be read off these curves (None: it can)."""
    if switch == 0:
        return "the run has no phase 1"
    if not evals:
        return (f"no TST evaluation between the switch (step {switch}) and the LR decay (step {decay}); "
                "evaluate more often (train.eval_every)")
    if fit is None:
        return (f"the baseline has {len(stable_rows(base, warmup, decay))} evaluations in its stable phase "
                f"(steps {max(2 * warmup, 1)} to {decay}), and fitting its curve needs {MIN_FIT_EVALS}; "
                "evaluate more often (train.eval_every)")
    return None


def switch_figures(base: list[dict[str, Any]], tst: list[dict[str, Any]], switch_step: int,
                   own_lrs: bool) -> dict[str, Any] | None:
    """Return both arms' val loss at the switch, TST's spike against the baseline and its first evaluation below
    it after the switch (those two not comparable when the arms ran at different LRs); None where either curve
    has no value at the switch."""
    tst_at, base_at = value_at(tst, switch_step), value_at(base, switch_step)
    if tst_at is None or base_at is None:
        return None
    after = [r for r in tst if r["step"] > switch_step]
    crossing = next((r["step"] for r in after if r["val_loss"] < (value_at(base, r["step"]) or float("inf"))), None)
    figures = {
        "tst_val_loss_at_switch": tst_at,
        "baseline_val_loss_at_switch": base_at,
        "spike_vs_baseline": None if own_lrs else tst_at - base_at,
        "first_eval_below_baseline_after_switch": None if own_lrs else crossing,
    }
    if own_lrs:
        figures["not_comparable"] = NOT_COMPARABLE
    return figures


WALL_TOLERANCE = 1.25  # per-FLOP wall times further apart than this say the machine's load differed


def within_runs(base: list[dict[str, Any]], tst: list[dict[str, Any]],
                costs: list[tuple[float, float]]) -> dict[str, Any]:
    """Return the within-run equal-loss view: where each arm's own curve first reaches the baseline's final val
    loss, in steps and in wall time. TST's curve is read as it stands, its own LR decay included. Wall time only
    where the arms' seconds per FLOP (``costs``: each arm's wall time and FLOPs) agree within ``WALL_TOLERANCE``:
    beyond it the machine's load differed between the runs, and a wall-time ratio would measure that."""
    target = base[-1]["val_loss"]
    b_step, t_step = first_reaching(base, target, "step"), first_reaching(tst, target, "step")
    b_time, t_time = first_reaching(base, target, "wall_time"), first_reaching(tst, target, "wall_time")
    per_flop = [seconds / flops for seconds, flops in costs if flops]
    ratio = max(per_flop) / min(per_flop) if len(per_flop) == 2 and min(per_flop) > 0 else None
    steady = ratio is not None and ratio <= WALL_TOLERANCE
    return {"target_val_loss": target, "baseline_steps": b_step, "tst_steps": t_step,
            "speedup_steps": (b_step / t_step) if t_step else None,
            "baseline_time_s": b_time, "tst_time_s": t_time,
            "speedup_time": (b_time / t_time) if t_time and steady else None,
            "wall_time_per_flop_ratio": ratio, "wall_time_comparable": steady}
