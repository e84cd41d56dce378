"""scale: a study re-read from its saved runs, its gaps and phase-1 step values read against the noise."""

import json

import numpy as np
import pytest

from tstrain.config import load_config
from tstrain.studies.scale import fit_crossing, read_study

STEPS, SWITCH = 2000, 600  # cpu-micro's WSD: warmup 50, decay from step 1600; s=4, r=0.3


def curve(step):
    return 3.6 + 26.0 * max(step, 25) ** -0.55


def write_run(d, cfg, losses):
    d.mkdir(parents=True)
    (d / "config.toml").write_text(cfg.to_toml())
    rows = [{"step": s, "phase": 2, "val_loss": v, "data_tokens": s * 1280, "flops": s * 1.0} for s, v in losses]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = cfg.train.steps
    (d / "summary.json").write_text(json.dumps({"final_val_loss": losses[-1][1], "flops": n * 1.0,
                                                "data_tokens": n * 1280, "steps": n}))


def write_cell(root, seed, final_gap, value, noise=0.01):
    """A baseline and a TST arm whose phase-1 steps are each worth ``value`` baseline steps and whose
    final val loss is ``final_gap`` above the baseline's."""
    rng = np.random.default_rng(seed)
    cfg = load_config("cpu-micro", overrides={"train.steps": STEPS, "model.vocab_size": 2048, "train.seed": seed})
    steps = range(0, STEPS + 1, 50)
    base = [(s, curve(s) + noise * rng.normal()) for s in steps]
    tst = [(s, 6.0 if s <= SWITCH else curve(s - SWITCH + value * SWITCH) + noise * rng.normal()) for s in steps]
    tst[-1] = (STEPS, base[-1][1] + final_gap)
    cell = root / "cpu-micro" / f"steps{STEPS}" / f"seed{seed}"
    write_run(cell / "baseline", cfg.with_values({"tst.ratio": 0.0}), base)
    write_run(cell / "tst-s4-r0.3", cfg, tst)


def test_a_study_is_re_read_from_its_saved_runs_with_intervals(tmp_path):
    write_cell(tmp_path, 0, final_gap=0.005, value=0.5)
    result = read_study(tmp_path)
    figs = result["sizes"]["cpu-micro"]["cells"][str(STEPS)]["0"]["tst-s4-r0.3"]
    assert figs["gap"] == pytest.approx(0.005) and figs["eval_noise"] == pytest.approx(0.01, rel=0.35)
    lo, hi = figs["phase1_step_value_interval"]
    assert lo < 0.5 < hi and figs["phase1_step_value_reading"] == "costs compute"
    md = (tmp_path / "scale.md").read_text()
    assert "| cpu-micro |" in md and "within noise" in md and "costs compute" in md
    assert (tmp_path / "scale_gap.png").is_file() and (tmp_path / "scale_step_value_course.png").is_file()


def test_two_seeds_that_disagree_are_within_noise(tmp_path):
    write_cell(tmp_path, 0, final_gap=0.1, value=0.5)
    read_study(tmp_path)
    assert "baseline better" in (tmp_path / "scale.md").read_text()  # one seed, 0.1 nats: beyond the noise
    write_cell(tmp_path, 1, final_gap=-0.07, value=0.5)
    read_study(tmp_path)
    row = next(line for line in (tmp_path / "scale.md").read_text().splitlines() if "tst-s4-r0.3" in line)
    assert "+0.1000, -0.0700" in row and "within noise" in row


def test_the_gap_trend_crosses_zero_where_its_line_does():
    fit = fit_crossing([(100, 0.4), (1000, 0.2), (10000, 0.0)])
    assert fit["slope_per_decade"] == pytest.approx(-0.2) and fit["crossing_steps"] == pytest.approx(10000)


def test_an_arm_at_its_own_lr_is_read_without_a_phase1_step_value(tmp_path):
    write_cell(tmp_path, 0, final_gap=-0.1, value=0.5)
    arm_dir = tmp_path / "cpu-micro" / f"steps{STEPS}" / "seed0" / "tst-s4-r0.3"
    cfg = load_config(config_file=arm_dir / "config.toml")
    (arm_dir / "config.toml").write_text(cfg.with_values({"optim.lr": cfg.optim.lr / 2}).to_toml())
    figs = read_study(tmp_path)["sizes"]["cpu-micro"]["cells"][str(STEPS)]["0"]["tst-s4-r0.3"]
    assert figs["lr"] == cfg.optim.lr / 2 and figs["baseline_lr"] == cfg.optim.lr
    assert figs["phase1_step_value"] is None and figs["phase1_step_value_reading"] == "not comparable"
    assert figs["gap_at_switch"] is None and figs["half_recovery_steps"] is None
    assert figs["gap"] == pytest.approx(-0.1)
    row = next(line for line in (tmp_path / "scale.md").read_text().splitlines() if "tst-s4-r0.3" in line)
    assert f"tst-s4-r0.3 at LR {cfg.optim.lr / 2:g}" in row and "TST better" in row and "not comparable" in row


def fake_run(best_lr_of_ratio):
    """A stand-in for training: a run's final val loss is lowest at ``best_lr_of_ratio[ratio]``."""
    def run(cfg, run_dir):
        miss = abs(np.log2(cfg.optim.lr / best_lr_of_ratio[cfg.tst.ratio]))
        steps = range(0, cfg.train.steps + 1, 50)
        write_run(run_dir, cfg, [(s, curve(s) + 0.1 * miss + 0.001 * (s % 100)) for s in steps])
        return json.loads((run_dir / "summary.json").read_text())
    return run


def test_tune_arms_trains_each_arm_at_its_own_best_lr(data_dir, tmp_path, monkeypatch):
    from tstrain.studies import scale

    monkeypatch.setattr(scale, "run_or_reuse", fake_run({0.0: 4e-3, 0.2: 2e-3}))
    options = scale.ScaleOptions(sizes=("cpu-micro",), steps=(STEPS,), arms=((2, 0.2),), seeds=(0,),
                                 lrs=(1e-3, 2e-3, 4e-3), tune_steps=500, tune_arms=True)
    result = scale.scale_study(str(data_dir), tmp_path, options)
    entry = result["sizes"]["cpu-micro"]
    assert entry["lr"] == 4e-3 and entry["arm_lrs"] == {"tst-s2-r0.2": 2e-3}
    assert set(entry["arm_lr_tuning"]["tst-s2-r0.2"]) == {"0.001", "0.002", "0.004"}
    cell = tmp_path / "cpu-micro" / f"steps{STEPS}" / "seed0"
    assert load_config(config_file=cell / "baseline" / "config.toml").optim.lr == 4e-3
    assert load_config(config_file=cell / "tst-s2-r0.2" / "config.toml").optim.lr == 2e-3
    tuned = load_config(config_file=tmp_path / "cpu-micro" / "lr-tuning" / "tst-s2-r0.2" / "lr0.001" / "config.toml")
    assert tuned.tst.ratio == 0.2 and tuned.train.steps == 500
    md = (tmp_path / "scale.md").read_text()
    assert "cpu-micro: the baseline at LR 0.004" in md and "tst-s2-r0.2 at its own LR 0.002" in md
    assert read_study(tmp_path)["sizes"]["cpu-micro"]["arm_lrs"] == {"tst-s2-r0.2": 2e-3}


def test_tune_arms_needs_the_lrs_to_tune_over(data_dir, tmp_path):
    from tstrain.errors import ConfigError
    from tstrain.studies.scale import ScaleOptions, scale_study

    with pytest.raises(ConfigError, match="--tune-arms tunes over --lrs"):
        scale_study(str(data_dir), tmp_path / "study", ScaleOptions(sizes=("tiny",), tune_arms=True))
    assert not (tmp_path / "study").exists()


def noisy_run(gap, noise):
    """A stand-in for training: evaluations scattered by ``noise`` around one curve, TST ending ``gap`` above."""
    def run(cfg, run_dir):
        rng = np.random.default_rng(cfg.train.seed)
        steps = list(range(0, cfg.train.steps + 1, 50))
        losses = [(s, curve(s) + noise * rng.normal()) for s in steps[:-1]]
        end = curve(steps[-1]) + (gap if cfg.tst.ratio > 0 else 0.0)
        write_run(run_dir, cfg, [*losses, (steps[-1], end)])
        return json.loads((run_dir / "summary.json").read_text())
    return run


@pytest.mark.parametrize("gap, noise, within, seeds_run", [
    (0.08, 0.002, 0.0, ["seed0"]),  # beyond the noise
    (0.03, 0.002, 0.0, ["seed0"]),  # small, but beyond the noise: no fixed margin by default
    (0.08, 0.05, 0.0, ["seed0", "seed1"]),  # within the noise
    (0.03, 0.002, 0.05, ["seed0", "seed1"])])  # within an asked margin of 0.05 nats
def test_a_cell_is_repeated_unless_its_first_seed_settles_the_gap(data_dir, tmp_path, monkeypatch, gap, noise, within,
                                                                  seeds_run):
    from tstrain.studies import scale

    monkeypatch.setattr(scale, "run_or_reuse", noisy_run(gap, noise))
    options = scale.ScaleOptions(sizes=("cpu-micro",), steps=(STEPS,), arms=((2, 0.2),), seeds=(0, 1),
                                 repeat_within=within)
    cells = scale.scale_study(str(data_dir), tmp_path, options)["sizes"]["cpu-micro"]["cells"][str(STEPS)]
    assert sorted(p.name for p in (tmp_path / "cpu-micro" / f"steps{STEPS}").iterdir()) == seeds_run
    assert len(cells) == len(seeds_run) and cells["0"]["tst-s2-r0.2"]["gap"] == pytest.approx(gap)


def test_each_arm_gets_its_equal_loss_speedup_from_the_baselines_at_its_length_and_longer(data_dir, tmp_path,
                                                                                        monkeypatch):
    from tstrain.studies import scale

    gap = -0.09  # TST at 1000 steps ends between the baselines at 1000 and 2000
    monkeypatch.setattr(scale, "run_or_reuse", noisy_run(gap, 0.002))
    options = scale.ScaleOptions(sizes=("cpu-micro",), steps=(1000, 2000), arms=((2, 0.2),), seeds=(0,))
    result = scale.scale_study(str(data_dir), tmp_path, options)
    eq = result["sizes"]["cpu-micro"]["equal_loss"]["tst-s2-r0.2"]
    short, long = eq["1000"], eq["2000"]
    assert [g["steps"] for g in short["rungs"]] == [1000, 2000] and [g["steps"] for g in long["rungs"]] == [2000]
    frac = (curve(1000) - (curve(1000) + gap)) / (curve(1000) - curve(2000))
    assert short["speedup"] == pytest.approx(2.0 ** frac)
    assert long["speedup"] is None and long["bound"] == "above"  # below the longest (its own) baseline
    report = (tmp_path / "scale.md").read_text()
    assert "Compute to equal loss" in report and result["data_record"]["corpus_sha256"] in report
    assert scale.read_study(tmp_path)["sizes"]["cpu-micro"]["equal_loss"]["tst-s2-r0.2"]["1000"] == short
