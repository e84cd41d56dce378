"""The noise-aware readings: the baseline's fitted curve, the phase-1 step value and its interval,
and gaps read against the evaluation noise, on synthetic curves whose answers are known."""

import numpy as np
import pytest

from tstrain.studies.report_text import value_text
from tstrain.studies.statistics import (
    GapReading,
    StepValue,
    ValueSummary,
    combine,
    fit_curve,
    gap_reading,
    phase1_step_value,
    value_reading,
    value_summary,
)

A, B, C = 3.6, 26.0, 0.55  # a baseline curve of cpu-micro's shape: loss = A + B * step**-C
STEPS, WARMUP, DECAY = 6000, 50, 4800


def curve(step):
    return A + B * np.asarray(step, dtype=float) ** -C


def baseline_rows(noise, seed=0, every=50):
    rng = np.random.default_rng(seed)
    steps = np.arange(every, STEPS + 1, every)
    return [{"step": 0, "val_loss": 7.6}] + [{"step": int(t), "val_loss": float(curve(t) + noise * rng.normal())}
                                             for t in steps]


def tst_rows(value, switch, noise, seed=1, every=50):
    """TST whose phase-1 steps are each worth ``value`` baseline steps: in phase 2 at step t it stands
    where the baseline stood at step ``(t - switch) + value * switch``."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(every, STEPS + 1, every):
        loss = 6.0 if t <= switch else float(curve(max((t - switch) + value * switch, 50)))
        rows.append({"step": t, "val_loss": loss + noise * rng.normal()})
    return rows


def test_the_fit_recovers_a_known_power_law_and_the_noise_about_it():
    fit = fit_curve(baseline_rows(noise=0.02), WARMUP, DECAY)
    assert fit.first == 2 * WARMUP and fit.last == DECAY and fit.evals == DECAY // 50 - 1
    assert fit.noise == pytest.approx(0.02, rel=0.25)  # the scatter injected
    for t in (300, 1500, 4000):  # the curve itself, well inside the noise of one evaluation
        assert abs(fit.loss(t) - curve(t)) < 0.01
    assert fit.step_of(float(curve(2500))) == pytest.approx(2500, rel=0.1)
    assert fit.step_of(fit.a - 0.1) is None  # below the asymptote: never reached
    exact = fit_curve(baseline_rows(noise=0.0), WARMUP, DECAY)
    assert (exact.a, exact.b) == pytest.approx((A, B), rel=0.02) and exact.noise < 1e-3


@pytest.mark.parametrize("value,switch", [(0.4, 1800), (-0.5, 1800), (0.0, 1200)])
def test_the_step_value_is_recovered_with_an_interval_that_holds_it(value, switch):
    r = phase1_step_value(baseline_rows(0.017), tst_rows(value, switch, 0.017), switch, DECAY, WARMUP)
    assert r.steps == [4600, 4650, 4700, 4750, 4800] and r.at_step == 4700  # the last 5 before the decay
    lo, hi = r.interval
    assert lo < value < hi and abs(r.value - value) < (hi - lo) / 2 < 0.35
    assert r.reading == "costs compute" and hi < 1.0  # all below break-even
    # The course: one value per phase-2 evaluation before the decay, near the true value where TST is past
    # the baseline's first 200 steps.
    assert [p["step"] for p in r.course] == list(range(switch + 50, DECAY + 1, 50))
    late = [p["value"] for p in r.course if p["step"] - switch + value * switch >= 200]
    assert len(late) > 20 and np.median(late) == pytest.approx(value, abs=0.1)


def test_a_step_value_above_break_even_saves_compute_and_one_at_it_is_not_resolved():
    win = phase1_step_value(baseline_rows(0.005), tst_rows(1.5, 1200, 0.005), 1200, DECAY, WARMUP)
    assert win.value == pytest.approx(1.5, abs=0.15) and win.reading == "saves compute"
    assert win.extrapolated  # TST is ahead of the baseline's last stable evaluation
    even = phase1_step_value(baseline_rows(0.017), tst_rows(1.0, 1800, 0.017), 1800, DECAY, WARMUP)
    assert even.interval[0] < 1.0 < even.interval[1] and even.reading == "not resolved"


def test_more_noise_widens_the_interval():
    narrow = phase1_step_value(baseline_rows(0.005), tst_rows(0.3, 1800, 0.005), 1800, DECAY, WARMUP).interval
    wide = phase1_step_value(baseline_rows(0.03), tst_rows(0.3, 1800, 0.03), 1800, DECAY, WARMUP).interval
    assert wide[1] - wide[0] > 3 * (narrow[1] - narrow[0])


def test_a_step_value_that_cannot_be_measured_says_why():
    base, tst = baseline_rows(0.01), tst_rows(0.3, 1800, 0.01)
    assert phase1_step_value(base, tst, 0, DECAY, WARMUP).reason == "the run has no phase 1"
    late = [r for r in tst if r["step"] > DECAY]
    assert "no TST evaluation" in phase1_step_value(base, late, 1800, DECAY, WARMUP).reason
    sparse = [r for r in base if r["step"] % 1000 == 0]  # 4 evaluations in the stable phase
    few = phase1_step_value(sparse, tst, 1800, DECAY, WARMUP)
    assert few.value is None and "fitting its curve needs 5" in few.reason and few.reading == "not measured"
    below = [dict(r, val_loss=2.0) if r["step"] > 1800 else r for r in tst]  # below the baseline's asymptote
    r = phase1_step_value(base, below, 1800, DECAY, WARMUP)
    assert r.value is None and "below the baseline's fitted asymptote" in r.reason


def test_a_gap_inside_the_noise_is_within_noise_and_a_clear_one_is_a_win_or_a_loss():
    noise = fit_curve(baseline_rows(0.02), WARMUP, DECAY).noise  # measured from the curve, about 0.02
    assert gap_reading([0.03], [noise]).reading == "within noise"  # half-width ~ 1.96 * sqrt(2) * 0.02
    assert gap_reading([-0.03], [noise]).reading == "within noise"
    assert gap_reading([0.15], [noise]).reading == "baseline better"
    assert gap_reading([-0.15], [noise]).reading == "TST better"
    g = gap_reading([0.03], [noise])
    assert g.interval[0] < 0.0 < g.interval[1] and g.se == pytest.approx(np.sqrt(2) * noise)
    assert gap_reading([0.5], [None]).reading == "noise unknown"


def test_two_seeds_add_their_spread_to_the_noise():
    # Each seed alone is clear, but they disagree: the pair is within noise.
    assert gap_reading([0.08], [0.005]).reading == "baseline better"
    split = gap_reading([0.08, -0.06], [0.005, 0.005])
    assert split.reading == "within noise" and split.seeds == 2 and split.gap == pytest.approx(0.01)
    agree = gap_reading([0.08, 0.07], [0.005, 0.005])
    assert agree.reading == "baseline better" and agree.se < split.se
    c = combine([1.0, 3.0], [0.0, 0.0])
    assert c["mean"] == 2.0 and c["se"] == pytest.approx(np.sqrt(2.0 / 2))  # sample variance 2, over 2 seeds


def test_value_readings_over_seeds():
    assert value_reading([1.2, 1.9]) == "saves compute" and value_reading([0.2, 0.9]) == "costs compute"
    assert value_reading([0.5, None]) == "not resolved" and value_reading(None) == "not measured"
    one = StepValue(0.3, [0.1, 0.5], "costs compute")
    assert value_summary([one]).interval == [0.1, 0.5]
    two = value_summary([one, StepValue(1.3, [1.1, 1.5], "saves compute")])
    assert two.value == pytest.approx(0.8) and two.reading == "not resolved" and two.seeds == 2
    assert value_summary([StepValue(None, None, "not measured")]).reading == "not measured"


def test_tst_below_the_baseline_asymptote_reads_as_saving_compute_not_as_unmeasured():
    base, tst = baseline_rows(0.01), tst_rows(0.3, 1800, 0.01)
    below = [dict(r, val_loss=2.0) if r["step"] > 1800 else r for r in tst]
    summary = value_summary([phase1_step_value(base, below, 1800, DECAY, WARMUP)])
    assert summary.value is None and summary.reading == "saves compute" and summary.seeds == 1
    assert summary.interval == [None, None]  # every redraw stays below the asymptote
    assert value_text(summary) == "above any (saves compute)"
    near = value_summary([StepValue(None, [90.5, None], "saves compute")])
    assert value_text(near) == "above any (90.50 to unbounded; saves compute)"
    wide = value_summary([StepValue(None, [0.6, None], "not resolved")])
    assert wide.reading == "not resolved"
    assert value_text(value_summary([StepValue(None, None, "not measured")])) == "n/a"
    plain = ValueSummary(0.8, [0.5, 1.1], 1, "not resolved")
    assert value_text(plain) == "0.80 (0.50 to 1.10; not resolved)"


def test_one_rule_says_when_the_arms_are_comparable_and_every_report_follows_it():
    from tstrain.studies.report_text import lr_line
    from tstrain.studies.statistics import comparable

    assert comparable(4e-3, 4e-3) and not comparable(4e-3, 2e-3)
    assert lr_line({"baseline": 4e-3, "tst": 4e-3}) == ""
    assert lr_line({"baseline": 4e-3, "tst": 2e-3}) == " Each arm at its own LR: the baseline at 0.004, TST at 0.002."


def test_every_figure_is_formatted_by_one_function():
    from tstrain.studies.report_text import estimate_text, gap_text, interval_text, number

    assert number(None, ".2f") == number(float("nan"), ".2f") == "n/a"
    assert number(1.5, ".2f", suffix="x") == "1.50x" and number(None, ".0f", "not reached") == "not reached"
    assert interval_text([0.5, None], ".2f") == "0.50 to unbounded" and interval_text(None, ".2f") == "n/a"
    assert estimate_text(0.8, [0.5, 1.1]) == "0.80 (0.50 to 1.10)" and estimate_text(0.8, None) == "0.80"
    gap = GapReading(0.0123, 0.02, [0.0123 - 0.0392, 0.0123 + 0.0392], 1, "within noise")
    assert gap_text(gap) == "+0.0123 +- 0.0392 (within noise)"
