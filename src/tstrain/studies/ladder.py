"""Compute to equal loss, measured directly: a ladder of baselines at longer lengths against TST's final loss.

The paper's headline is a compute ratio at equal loss: how much longer a baseline must train to reach
the loss TST ends at. Each rung of the ladder is the baseline trained for a multiple of TST's steps
(by default 1.25, 1.5, 2 and 3; the equal-FLOPs baseline is the rung at 1), each with its own full
Warmup-Stable-Decay schedule. The rungs share their warmup and stable phase, so they are trained as
one trunk (the longest rung) with a decay branched off its checkpoint at each shorter rung's decay
start (``train.branch``, which checks, and a test shows, that a branched rung is that run exactly).

The reading (``equal_loss``): the rungs' final val losses, made non-increasing in compute (a pooled
isotonic fit, so noise cannot make a longer rung count as worse), are interpolated linearly in log
compute; the compute where they reach TST's final val loss, over TST's compute, is the speedup. Past
the longest rung it is a lower bound ("more than 3x"), before the shortest an upper one ("below 1x").
The interval redraws every final loss under the noise of a final value (a parametric bootstrap, fixed
seed): the scatter of the evaluations within the decays about a smooth curve (``final_noise``), plus
the spread between seeds where there are several.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..errors import ConfigError
from .plans import LADDER
from .runs import RunSpec, decay_start

DRAWS = 2000
MIN_DECAY_EVALS = 6  # a cubic's four parameters and two degrees of freedom for the scatter
MIN_NOISE_DOF = 10  # fewer leave the scatter's estimate too loose to read a gap by (its 95% range ~0.6-1.7x)


def plan_ladder(baseline: Config, multiples: tuple[float, ...] = LADDER) -> list[RunSpec]:
    """Return the baseline's rungs at ``multiples`` of its steps, shortest first, besides the baseline itself
    (the rung at 1, which the caller trains as ``baseline``). Refuses multiples no ladder can have."""
    n = baseline.train.steps
    bad = [m for m in multiples if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0)]
    steps = [round(m * n) for m in multiples if m not in bad]
    if bad or not multiples or len(set(steps)) != len(steps) or any(s < 1 or s == n for s in steps):
        raise ConfigError(f"--ladder takes distinct positive multiples of --steps other than 1 that give distinct "
                          f"run lengths; got {','.join(f'{m:g}' for m in multiples) or 'none'} of {n} steps: give "
                          "e.g. --ladder 1.25,1.5,2,3")
    return sorted((RunSpec(f"baseline-x{m:g}", f"baseline, {m:g}x ({s} steps)",
                           baseline.with_values({"train.steps": s})) for m, s in zip(multiples, steps)),
                  key=lambda r: r.config.train.steps)


def training_order(rungs: list[RunSpec]) -> list[RunSpec]:
    """Return the ladder's ``rungs`` (the baseline among them) in the order they train: the longest first, the
    trunk, with every other rung branching off it at that rung's decay start; then the others."""
    trunk = max(rungs, key=lambda r: r.config.train.steps)
    others = [r for r in rungs if r is not trunk]
    return [replace(trunk, branches=tuple((r.name, decay_start(r.config)) for r in others)), *others]


# ----------------------------------------------------------------------------------------------
# The reading
# ----------------------------------------------------------------------------------------------


def final_noise(curves: list[tuple[list[dict[str, Any]], int]]) -> float | None:
    """Return the noise of one evaluation at the end of a run: the pooled scatter of each run's evaluations
    after its decay start (``(rows, decay_start)`` per run) about a cubic in the step, over the runs with
    ``MIN_DECAY_EVALS`` such evaluations or more; None with fewer than ``MIN_NOISE_DOF`` degrees of freedom."""
    rss, dof = 0.0, 0
    for rows, start in curves:
        after = [r for r in rows if r["step"] > start]
        if len(after) < MIN_DECAY_EVALS:
            continue
        t = np.array([r["step"] for r in after], dtype=float)
        t = (t - t.mean()) / (t.std() or 1.0)
        y = np.array([r["val_loss"] for r in after], dtype=float)
        resid = y - np.polyval(np.polyfit(t, y, 3), t)
        rss, dof = rss + float(resid @ resid), dof + len(after) - 4
    return math.sqrt(rss / dof) if dof >= MIN_NOISE_DOF else None


def non_increasing(y: np.ndarray) -> np.ndarray:
    """Return the least-squares non-increasing fit of ``y`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, size]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks[-2], blocks[-1]
            blocks[-2:] = [[(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2]]
    return np.concatenate([np.full(int(n), m) for m, n in blocks])


def log_compute_at(log_c: np.ndarray, losses: np.ndarray, target: float) -> float:
    """Return the log compute where the rungs (by compute) reach ``target`` on their non-increasing fit, linear
    in log compute between rungs; +inf past the last rung, -inf before the first."""
    y = non_increasing(losses)
    if target < y[-1]:
        return math.inf
    if target > y[0]:
        return -math.inf
    i = int(np.argmax(y <= target))
    if i == 0:
        return float(log_c[0])
    frac = (y[i - 1] - target) / (y[i - 1] - y[i])
    return float(log_c[i - 1] + frac * (log_c[i] - log_c[i - 1]))


def _mean_and_se(values: list[float], noise: float | None) -> tuple[float, float | None]:
    """Return the mean over seeds of a final val loss and its standard error (evaluation noise plus seed spread)."""
    n, mean = len(values), sum(values) / len(values)
    spread = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    if noise is None and n == 1:
        return mean, None
    return mean, math.sqrt(((noise or 0.0) ** 2 + spread) / n)


def equal_loss(rungs: list[dict[str, Any]], tst: dict[str, Any], noise: float | None,
               draws: int = DRAWS) -> dict[str, Any]:
    """Return the equal-loss speedup of TST against the ladder: ``rungs`` (the 1x baseline among them) and ``tst``
    each ``{"steps", "flops", "val_losses": [one per seed]}``; ``noise`` the noise of one final evaluation
    (``final_noise``). Speedup: the baseline compute reaching TST's mean final val loss over TST's compute."""
    rungs = sorted(rungs, key=lambda r: r["flops"])
    log_c = np.log([r["flops"] for r in rungs])
    means = [_mean_and_se(r["val_losses"], noise) for r in rungs]
    target, target_se = _mean_and_se(tst["val_losses"], noise)
    m = np.exp(log_c - math.log(tst["flops"]))  # each rung's compute over TST's
    at = log_compute_at(log_c, np.array([x for x, _ in means]), target)
    speedup = math.exp(at) / tst["flops"] if math.isfinite(at) else None
    out: dict[str, Any] = {
        "speedup": speedup, "interval": None, "seeds": len(tst["val_losses"]), "noise": noise,
        "tst": {"steps": tst["steps"], "flops": tst["flops"], "val_loss": target},
        "rungs": [{"steps": r["steps"], "flops": r["flops"], "multiple": float(x), "val_loss": v}
                  for r, x, (v, _) in zip(rungs, m, means)],
        "bound": None if speedup is not None else ("above" if at > 0 else "below"),
        "method": "rungs' final val losses made non-increasing in compute (isotonic), linear in log compute "
                  "between rungs; interval: parametric bootstrap of every final loss under the noise of a final "
                  "value (scatter of the evaluations within the decays about a cubic) and the seed spread"}
    out["verdict"] = "noise unknown"
    if target_se is not None and all(se is not None for _, se in means):
        rng = np.random.default_rng(0)
        ses = np.array([se for _, se in means])
        ys = np.array([v for v, _ in means])[None, :] + ses * rng.standard_normal((draws, len(means)))
        ts = target + target_se * rng.standard_normal(draws)
        got = np.sort([log_compute_at(log_c, y, t) for y, t in zip(ys, ts)])
        lo, hi = got[int(0.025 * draws)], got[math.ceil(0.975 * draws) - 1]
        out["interval"] = [_end(lo, m, tst["flops"], False), _end(hi, m, tst["flops"], True)]
        even = math.log(tst["flops"])  # break-even: the baseline needs TST's compute
        out["verdict"] = "saves compute" if lo > even else "costs compute" if hi < even else "not resolved"
    out["reading"] = equal_loss_sentence(out)
    return out


def ladder_reading(rows: dict[str, list[dict[str, Any]]], flops: dict[str, float], decays: dict[str, int],
                   rungs: list[str], stable_noise: float | None) -> dict[str, Any]:
    """Return ``equal_loss`` of one seed's runs: ``rows`` (evaluation rows), ``flops`` (training FLOPs) and
    ``decays`` (decay start) by run name, ``rungs`` the ladder's names (the 1x baseline among them), ``tst``
    TST's. The noise of a final value comes from the evaluations within the decays (``final_noise``), or, with
    too few of them, from the baseline's stable phase (``stable_noise``), and says which."""
    names = [*rungs, "tst"]
    noise = final_noise([(rows[n], decays[n]) for n in names])
    source = "evaluations within the decays" if noise is not None else "the baseline's stable phase"
    if noise is None:
        noise = stable_noise
    runs = {n: {"steps": rows[n][-1]["step"], "flops": flops[n], "val_losses": [rows[n][-1]["val_loss"]]}
            for n in names}
    out = equal_loss([runs[n] for n in rungs], runs["tst"], noise)
    out["noise_from"] = source if noise is not None else None
    return out


def over_seeds(readings: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the equal-loss speedup over seeds from each seed's ``equal_loss`` (one per comparison, the same
    ladder): the mean final val losses, with the seed spread added to the noise (its root mean square over
    the seeds). Refuses readings of different ladders."""
    ladders = {tuple(g["steps"] for g in r["rungs"]) + (r["tst"]["steps"],) for r in readings}
    if len(ladders) != 1:
        raise ConfigError(f"the comparisons' ladders differ ({' / '.join(map(str, sorted(ladders)))}): combine "
                          "seeds of one command only")
    noises = [r["noise"] for r in readings]
    noise = math.sqrt(sum(n * n for n in noises) / len(noises)) if None not in noises else None
    first = readings[0]
    rungs = [{"steps": g["steps"], "flops": g["flops"], "val_losses": [r["rungs"][i]["val_loss"] for r in readings]}
             for i, g in enumerate(first["rungs"])]
    tst = {**first["tst"], "val_losses": [r["tst"]["val_loss"] for r in readings]}
    out = equal_loss(rungs, tst, noise)
    out["noise_from"] = first.get("noise_from")
    out["per_seed"] = [r["speedup"] for r in readings]
    return out


def _end(log_c: float, multiples: np.ndarray, tst_flops: float, upper: bool) -> float | None:
    """Return one end of the speedup's interval from its draw. A draw past the longest rung says "more than" that
    rung's multiple, one before the shortest "less than" the shortest's: so a lower end past the ladder is the
    longest multiple, an upper end before it the shortest; the other two cases are unbounded (None)."""
    if math.isfinite(log_c):
        return math.exp(log_c) / tst_flops
    if upper:
        return None if log_c > 0 else float(multiples[0])
    return float(multiples[-1]) if log_c > 0 else None


def _interval_words(interval: list[float | None], rungs: list[dict[str, Any]]) -> str:
    """Return a speedup's 95% interval in words; an open end is said against the ladder's end it runs past."""
    lo, hi = interval
    low = f"below {rungs[0]['multiple']:.2f}" if lo is None else f"{lo:.2f}"
    high = f"above {rungs[-1]['multiple']:.2f}" if hi is None else f"{hi:.2f}"
    return f"interval {low} to {high}"


def equal_loss_sentence(r: dict[str, Any]) -> str:
    """Return the equal-loss reading in one sentence."""
    rungs, t = r["rungs"], r["tst"]
    ladder = ", ".join(f"{x['multiple']:.2f}" for x in rungs)
    within = "" if r["interval"] is None else f"95% {_interval_words(r['interval'], rungs)}; "
    if r["bound"] == "above":
        return (f"TST's final val loss {t['val_loss']:.4f} is below every rung of the baseline ladder (at {ladder}x "
                f"TST's compute, each with its own WSD schedule), the longest ending at {rungs[-1]['val_loss']:.4f}: "
                f"a baseline needs more than {rungs[-1]['multiple']:.2f}x TST's compute to match it "
                f"({within}{r['verdict']}).")
    if r["bound"] == "below":
        return (f"TST's final val loss {t['val_loss']:.4f} is above every rung of the baseline ladder (at {ladder}x "
                f"TST's compute), the shortest ending at {rungs[0]['val_loss']:.4f}: a baseline matches it with "
                f"less than {rungs[0]['multiple']:.2f}x TST's compute ({within}{r['verdict']}).")
    return (f"A baseline needs {r['speedup']:.2f}x TST's compute to reach TST's final val loss {t['val_loss']:.4f} "
            f"({within}{r['verdict']}), read off a ladder of baselines at {ladder}x TST's compute, each with its own "
            "WSD schedule.")


def plot_ladder(r: dict[str, Any], path: Path) -> None:
    """Write the ladder's final val losses against compute (log scale), their non-increasing fit, TST's point and
    where the fit reaches TST's loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs, t = r["rungs"], r["tst"]
    x = np.array([g["flops"] for g in rungs])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(x, [g["val_loss"] for g in rungs], "o", color="C0", label="baseline ladder (final val loss)")
    ax.plot(x, non_increasing(np.array([g["val_loss"] for g in rungs])), "-", color="C0", alpha=0.5,
            label="non-increasing fit, linear in log compute")
    for g in rungs:
        ax.annotate(f"{g['multiple']:.2f}x", (g["flops"], g["val_loss"]), textcoords="offset points", xytext=(4, 6),
                    fontsize=8)
    ax.plot([t["flops"]], [t["val_loss"]], "*", color="C3", markersize=14, label="TST (final val loss)")
    ax.axhline(t["val_loss"], color="C3", linestyle=":", linewidth=1)
    if r["speedup"] is not None:
        ax.axvline(r["speedup"] * t["flops"], color="grey", linestyle="--", linewidth=1,
                   label=f"equal loss: {r['speedup']:.2f}x TST's compute")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final next-token validation loss (nats)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
