"""compare: the three views computed from metrics, and one small end-to-end comparison."""

import json

import pytest

from tstrain.config import load_config
from tstrain.studies.compare import analyse, plan_runs, report_markdown
from tstrain.studies.report_text import json_text
from tstrain.studies.runs import decay_start
from tstrain.studies.statistics import first_reaching


def write_run(d, val, steps, data_per_step, wall_per_step=1.0):
    d.mkdir(parents=True)
    rows = [{"step": s, "phase": 2, "val_loss": v, "data_tokens": s * data_per_step, "flops": s * 10.0,
             "wall_time": s * wall_per_step} for s, v in val]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({"steps": steps, "data_tokens": steps * data_per_step,
                                                "flops": steps * 10.0, "wall_time": steps * wall_per_step}))


def test_value_at_interpolates_and_is_none_outside():
    from tstrain.studies.statistics import value_at

    rows = [{"step": 0, "val_loss": 5.0}, {"step": 10, "val_loss": 4.0}]
    assert value_at(rows, 4) == pytest.approx(4.6) and value_at(rows, 10) == 4.0 and value_at(rows, 11) is None


def test_first_reaching_interpolates_between_evaluations():
    rows = [{"step": 0, "val_loss": 5.0}, {"step": 10, "val_loss": 4.0}, {"step": 20, "val_loss": 3.0}]
    assert first_reaching(rows, 3.5, "step") == pytest.approx(15.0)
    assert first_reaching(rows, 4.0, "step") == pytest.approx(10.0)
    assert first_reaching(rows, 2.0, "step") is None


def test_analyse_gives_the_three_views(tmp_path):
    base = [(0, 6.0), (5, 5.4), (20, 4.5), (30, 4.2), (40, 4.0)]  # no evaluation at the switch (10)
    tst = [(0, 6.0), (10, 4.8), (20, 4.9), (30, 4.0), (40, 3.8)]  # switch at 10, spike, then better
    eq = [(0, 6.0), (40, 3.9), (70, 3.6)]
    write_run(tmp_path / "baseline", base, 40, 100)
    write_run(tmp_path / "tst", tst, 40, 200, wall_per_step=1.1)
    write_run(tmp_path / "eq", eq, 70, 100)
    r = analyse({"baseline": tmp_path / "baseline", "tst": tmp_path / "tst", "baseline-equal-data": tmp_path / "eq"},
                10, 36)
    assert r.equal_flops_delta == pytest.approx(-0.2)
    w = r.equal_loss_within_runs
    assert w["target_val_loss"] == 4.0 and r.equal_loss is None  # no ladder, no equal-loss speedup
    assert w["baseline_steps"] == 40 and w["tst_steps"] == pytest.approx(30)
    assert w["speedup_steps"] == pytest.approx(40 / 30)
    assert w["speedup_time"] == pytest.approx(40 / 33) and w["wall_time_comparable"]
    assert r.switch["baseline_val_loss_at_switch"] == pytest.approx(5.4 - 0.9 / 3)
    assert r.switch["spike_vs_baseline"] == pytest.approx(4.8 - 5.1)
    assert r.switch["first_eval_below_baseline_after_switch"] == 30
    assert r.equal_data_delta == pytest.approx(0.2)
    assert r.runs["tst"].data_tokens == 8000
    # Three baseline evaluations in the stable phase (steps 1-36) are too few to fit its curve: no noise
    # estimate, so neither the gap nor the phase-1 step value is read as a win or a loss.
    assert r.phase1_step_value is None and "fitting its curve needs 5" in r.phase1_step_value_detail.reason
    assert r.eval_noise is None and r.equal_flops.reading == "noise unknown"


def test_no_wall_time_speedup_where_the_arms_seconds_per_flop_differ_beyond_their_work(tmp_path):
    base = [(0, 6.0), (20, 4.5), (40, 4.0)]
    tst = [(0, 6.0), (20, 4.3), (40, 3.8)]
    write_run(tmp_path / "baseline", base, 40, 100, wall_per_step=2.4)  # ran beside other jobs
    write_run(tmp_path / "tst", tst, 40, 200)
    r = analyse({"baseline": tmp_path / "baseline", "tst": tmp_path / "tst"}, 10, 36)
    w = r.equal_loss_within_runs
    assert w["speedup_time"] is None and not w["wall_time_comparable"]
    assert w["wall_time_per_flop_ratio"] == pytest.approx(2.4) and w["speedup_steps"] is not None
    report = report_markdown(r, {"baseline": "b", "tst": "t"}, "test")
    assert "No wall-time speedup" in report and "machine's load differed" in report
    assert "wall time to reach it" not in report


def test_a_gap_is_read_against_the_noise_of_the_baseline_curve(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    steps = list(range(0, 2001, 20))
    base = [(s, 3.5 + 20.0 * max(s, 10) ** -0.5 + 0.03 * rng.normal()) for s in steps]  # noise 0.03 nats
    final = base[-1][1]
    write_run(tmp_path / "baseline", base, 2000, 100)
    readings = {}
    for name, gap in (("close", 0.03), ("far", 0.3), ("ahead", -0.3)):
        write_run(tmp_path / name, base[:-1] + [(2000, final + gap)], 2000, 100)
        r = analyse({"baseline": tmp_path / "baseline", "tst": tmp_path / name}, 400, 1600, warmup=20)
        readings[name] = r.equal_flops.reading
        assert r.eval_noise == pytest.approx(0.03, rel=0.3)
    assert readings == {"close": "within noise", "far": "baseline better", "ahead": "TST better"}
    from tstrain.studies.compare import reading_lines

    r = analyse({"baseline": tmp_path / "baseline", "tst": tmp_path / "close"}, 400, 1600, warmup=20)
    text = " ".join(reading_lines(r))
    assert "within noise" in text and "not resolved" in text and "saves compute" not in text
    far = analyse({"baseline": tmp_path / "baseline", "tst": tmp_path / "far"}, 400, 1600, warmup=20)
    text = " ".join(reading_lines(far))
    assert "costs compute" in text and "`--baseline-lr` at this one" in text and "--tune-arms" not in text
    far = analyse({"baseline": tmp_path / "baseline", "tst": tmp_path / "far"}, 400, 1600, warmup=20,
                  lrs={"baseline": 4e-3, "tst": 2e-3})
    text = " ".join(reading_lines(far))
    assert "each arm at its own LR" in text and "--tune-arms" in text and "`--baseline-lr` at this one" not in text
    # TST's phase 2 is the baseline's own curve: a phase-1 step bought one baseline step, break-even.
    from tstrain.studies.compare import report_markdown

    assert r.phase1_step_value == pytest.approx(1.0, abs=0.1)
    lo, hi = r.phase1_step_value_detail.interval
    report = report_markdown(r, {"baseline": "baseline", "tst": "tst"}, "test")
    assert f"Phase-1 step value: **{r.phase1_step_value:.2f}**" in report
    assert f"95% interval {lo:.2f} to {hi:.2f}: not resolved" in report and "`phase1_step_value.png`" in report


def test_plan_runs_equal_flops_and_equal_data():
    cfg = load_config("tiny", overrides={"train.steps": 100, "tst.bag_size": 4, "tst.ratio": 0.3})
    runs = {r.name: r.config for r in plan_runs(cfg, equal_data=True)}
    assert runs["baseline"].switch_step == 0 and runs["tst"].switch_step == 30
    assert runs["baseline"].train.steps == runs["tst"].train.steps == 100
    assert runs["baseline-equal-data"].train.steps == 4 * 30 + 70  # reads what TST reads
    assert runs["baseline"].model == runs["tst"].model and runs["baseline"].train.seed == runs["tst"].train.seed
    # With a step-down (15 steps at s=4, 15 at s=2) the equal-data baseline follows what TST reads.
    step_down = load_config("tiny", overrides={"train.steps": 100, "tst.ratio": 0.3, "tst.transition": "step-down"})
    specs = {r.name: r for r in plan_runs(step_down, equal_data=True)}
    assert specs["baseline-equal-data"].config.train.steps == 4 * 15 + 2 * 15 + 70
    assert "transition=step-down" in specs["tst"].label


def test_compare_end_to_end_writes_report_json_and_plots(tiny_cfg, tmp_path):
    from tstrain.studies.compare import compare
    from tstrain.studies.plans import CompareOptions

    cfg = tiny_cfg(**{"train.steps": 12, "tst.ratio": 0.5, "train.eval_every": 3})
    result = compare(cfg, tmp_path / "cmp", CompareOptions(command="test"))
    for name in ("report.md", "comparison.json", "val_loss_vs_flops.png", "val_loss_vs_data_tokens.png",
                 "val_loss_vs_wall_time.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    runs = result.runs
    assert runs["baseline"].flops == runs["tst"].flops  # equal FLOPs
    assert runs["tst"].data_tokens == 8 * 32 * (4 * 6 + 6) and runs["baseline"].data_tokens == 8 * 32 * 12
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert f"{runs['tst'].final_val_loss:.4f}" in report and "Equal loss" in report
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert "What a phase-1 step buys" in report and saved == json.loads(json_text(result))
    assert saved["runs"]["tst"]["final_val_loss"] == runs["tst"].final_val_loss and "phase1_step_value" in saved
    # 12 steps evaluated every 3: too few stable-phase evaluations to estimate the noise, so no verdict.
    assert result.equal_flops.reading == "noise unknown"
    assert "## Reading" in report and "not resolved" in report and "saves compute" not in report
    # A second call reuses the finished runs instead of training again; a baseline LR equal to TST's is the
    # default comparison, and its report and figures are the same bytes.
    before = (tmp_path / "cmp" / "tst" / "summary.json").stat().st_mtime
    written = {name: (tmp_path / "cmp" / name).read_bytes() for name in ("report.md", "comparison.json")}
    compare(cfg, tmp_path / "cmp", CompareOptions(command="test", baseline_lr=cfg.optim.lr))
    assert (tmp_path / "cmp" / "tst" / "summary.json").stat().st_mtime == before
    assert {name: (tmp_path / "cmp" / name).read_bytes() for name in written} == written
    assert "lr " not in report.split("## Equal FLOPs")[0] and "own LR" not in report


def test_a_gap_at_different_lrs_keeps_its_reading_and_the_step_value_is_not_comparable(tmp_path):
    import numpy as np

    from tstrain.studies.compare import NOT_COMPARABLE, report_markdown

    rng = np.random.default_rng(0)
    base = [(s, 3.5 + 20.0 * max(s, 10) ** -0.5 + 0.03 * rng.normal()) for s in range(0, 2001, 20)]
    write_run(tmp_path / "baseline", base, 2000, 100)
    write_run(tmp_path / "tst", base[:-1] + [(2000, base[-1][1] - 0.3)], 2000, 100)
    dirs = {"baseline": tmp_path / "baseline", "tst": tmp_path / "tst"}
    same = analyse(dirs, 400, 1600, warmup=20)
    assert analyse(dirs, 400, 1600, warmup=20, lrs={"baseline": 2e-3, "tst": 2e-3}) == same
    assert same.phase1_step_value is not None and same.switch["spike_vs_baseline"] is not None
    own = analyse(dirs, 400, 1600, warmup=20, lrs={"baseline": 4e-3, "tst": 2e-3})
    # The gap between the runs as trained is read against the same noise ...
    assert own.equal_flops == same.equal_flops and own.equal_flops.reading == "TST better"
    assert own.equal_loss_within_runs == same.equal_loss_within_runs
    # ... while what reads the baseline's curve as TST's counterfactual gives no figure.
    assert own.phase1_step_value is None and own.phase1_step_value_detail.course == []
    assert own.phase1_step_value_detail.reading == "not comparable"
    assert own.switch["spike_vs_baseline"] is None
    assert own.switch["first_eval_below_baseline_after_switch"] is None
    assert own.lrs == {"baseline": 4e-3, "tst": 2e-3} and own.each_arm_at_its_own_lr is True
    assert own.to_dict()["each_arm_at_its_own_lr"] is True and "lrs" not in same.to_dict()
    report = report_markdown(own, {"baseline": "baseline", "tst": "tst"}, "test")
    assert f"Not comparable: {NOT_COMPARABLE}." in report and "Phase-1 step value:" not in report
    assert "the baseline at 0.004, TST at 0.002" in report and "phase1_step_value.png" not in report
    assert "TST ends 0.300 nats below the baseline at equal FLOPs, each arm at its own LR (TST better" in report


def test_compare_with_the_baseline_at_its_own_lr(tiny_cfg, tmp_path):
    from tstrain.errors import ConfigError
    from tstrain.studies.compare import NOT_COMPARABLE, compare
    from tstrain.studies.plans import CompareOptions

    # 24 steps evaluated every 2: enough stable-phase evaluations for a phase-1 step value at one LR.
    cfg = tiny_cfg(**{"train.steps": 24, "tst.ratio": 0.5, "train.eval_every": 2})
    out = tmp_path / "cmp"
    result = compare(cfg, out, CompareOptions(equal_data=True, command="test", baseline_lr=6e-3))
    saved = {name: load_config(None, out / name / "config.toml").optim.lr
             for name in ("baseline", "tst", "baseline-equal-data")}
    assert saved == {"baseline": 6e-3, "tst": cfg.optim.lr, "baseline-equal-data": 6e-3} and cfg.optim.lr == 3e-3
    report = (out / "report.md").read_text()
    assert "| baseline (24 steps, lr 0.006) |" in report and "(24 steps, lr 0.003) |" in report
    assert "Each arm ran at its own LR: the baseline at 0.006, TST at 0.003." in report
    assert f"Not comparable: {NOT_COMPARABLE}." in report and "Phase-1 step value:" not in report
    assert not (out / "phase1_step_value.png").exists()
    saved_json = json.loads((out / "comparison.json").read_text())
    assert saved_json["phase1_step_value"] is None and saved_json["lrs"] == {"baseline": 6e-3, "tst": 3e-3}
    assert saved_json["phase1_step_value_detail"]["value"] is None
    assert saved_json["phase1_step_value_detail"]["reading"] == "not comparable"
    assert result.equal_flops.interval is not None  # the gaps keep their noise-aware reading
    assert f"{result.equal_flops_delta:+.4f}** nats ({result.equal_flops.reading}: 95% interval" in report
    # The same runs read at one LR would give a figure: the LRs, not the runs, withhold it.
    same = analyse({name: out / name for name in ("baseline", "tst")}, cfg.switch_step, decay_start(cfg),
                   cfg.optim.warmup_steps)
    assert same.phase1_step_value_detail.course
    # The baseline saved at 0.006 is not reused for a comparison at one LR.
    before = (out / "baseline" / "summary.json").stat().st_mtime
    with pytest.raises(ConfigError, match="optim.lr: saved 0.006, now 0.003"):
        compare(cfg, out, CompareOptions(command="test"))
    assert (out / "baseline" / "summary.json").stat().st_mtime == before


@pytest.mark.parametrize("value, shown", [("nan", "nan"), ("inf", "inf"), ("0", "0.0"), ("-1e-3", "-0.001")])
def test_a_baseline_lr_no_run_could_train_at_is_refused_before_anything_is_written(data_dir, tmp_path, capsys,
                                                                                  value, shown):
    from conftest import one_line_error
    from tstrain.errors import ConfigError
    from tstrain.studies.compare import compare
    from tstrain.studies.plans import CompareOptions

    out = tmp_path / "cmp"
    one_line_error(capsys, ["compare", "--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--steps", "4",
                            "--no-progress", f"--baseline-lr={value}"],
                   f"tstrain compare: error: --baseline-lr must be a finite number above 0; got {shown}")
    with pytest.raises(ConfigError, match="--baseline-lr must be a finite number above 0"):
        compare(load_config("tiny", overrides={"data.path": str(data_dir)}), out,
                CompareOptions(baseline_lr=float(value)))
    assert not out.exists()


def test_compare_refuses_a_config_without_tst_before_training(tiny_cfg, tmp_path):
    from tstrain.errors import ConfigError
    from tstrain.studies.compare import compare

    with pytest.raises(ConfigError, match="compare needs a TST run"):
        compare(tiny_cfg(**{"tst.ratio": 0.0}), tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
