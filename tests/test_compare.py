"""compare: the three views computed from metrics, and one small end-to-end comparison."""

import json

import pytest

from tstrain.compare import analyse, plan_runs
from tstrain.config import load_config
from tstrain.experiments import first_reaching


def write_run(d, val, steps, data_per_step, wall_per_step=1.0):
    d.mkdir(parents=True)
    rows = [{"step": s, "phase": 2, "val_loss": v, "data_tokens": s * data_per_step, "flops": s * 10.0,
             "wall_time": s * wall_per_step} for s, v in val]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({"steps": steps, "data_tokens": steps * data_per_step,
                                                "flops": steps * 10.0, "wall_time": steps * wall_per_step}))


def test_value_at_interpolates_and_is_none_outside():
    from tstrain.experiments import value_at

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
    assert r["equal_flops_delta"] == pytest.approx(-0.2)
    assert r["equal_loss"]["target_val_loss"] == 4.0
    assert r["equal_loss"]["baseline_steps"] == 40 and r["equal_loss"]["tst_steps"] == pytest.approx(30)
    assert r["equal_loss"]["speedup_steps"] == pytest.approx(40 / 30)
    assert r["equal_loss"]["speedup_time"] == pytest.approx(40 / 33)
    assert r["switch"]["baseline_val_loss_at_switch"] == pytest.approx(5.4 - 0.9 / 3)
    assert r["switch"]["spike_vs_baseline"] == pytest.approx(4.8 - 5.1)
    assert r["switch"]["first_eval_below_baseline_after_switch"] == 30
    assert r["equal_data_delta"] == pytest.approx(0.2)
    assert r["runs"]["tst"]["data_tokens"] == 8000
    # At step 30 (before the decay at 36) TST's 4.0 is the baseline's at step 40: past its decay.
    assert (r["phase1_step_value"] is None
            and "below anything the baseline reaches" in r["phase1_step_value_detail"]["reason"])


def test_phase1_step_value_counts_the_baseline_steps_a_phase_1_step_buys():
    from tstrain.experiments import phase1_step_value

    base = [{"step": s, "val_loss": 6.0 - 0.01 * s} for s in range(0, 101, 10)]  # 0.01 nats a step
    # Switch at 20; at step 60 TST has done 40 phase-2 steps and stands where the baseline was at step 50.
    tst = [{"step": 20, "val_loss": 5.9}, {"step": 40, "val_loss": 5.7}, {"step": 60, "val_loss": 5.5},
           {"step": 100, "val_loss": 4.9}]
    r = phase1_step_value(base, tst, switch=20, decay=80)
    assert [p["step"] for p in r["points"]] == [40, 60]  # phase 2, before the decay
    assert r["points"][0]["baseline_step"] == pytest.approx(30) and r["points"][0]["value"] == pytest.approx(0.5)
    assert r["value"] == pytest.approx((50 - 40) / 20) and r["reason"] is None
    # TST no better than a baseline that skipped phase 1: worth 0; worse: negative.
    assert phase1_step_value(base, [{"step": 60, "val_loss": 5.6}], 20, 80)["value"] == pytest.approx(0.0)
    assert phase1_step_value(base, [{"step": 60, "val_loss": 5.7}], 20, 80)["value"] == pytest.approx(-0.5)
    # Not measurable: no phase-2 evaluation before the decay; TST ahead of the whole stable baseline.
    assert "no TST evaluation" in phase1_step_value(base, [{"step": 90, "val_loss": 5.0}], 20, 80)["reason"]
    ahead = phase1_step_value(base, [{"step": 60, "val_loss": 5.1}], 20, 80)
    assert ahead["value"] is None and "more than 2.00 baseline steps" in ahead["reason"]
    assert phase1_step_value(base, tst, 0, 80)["value"] is None


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
    from tstrain.compare import compare

    cfg = tiny_cfg(**{"train.steps": 12, "tst.ratio": 0.5, "train.eval_every": 3})
    result = compare(cfg, tmp_path / "cmp", command="test")
    for name in ("report.md", "comparison.json", "val_loss_vs_flops.png", "val_loss_vs_data_tokens.png",
                 "val_loss_vs_wall_time.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    runs = result["runs"]
    assert runs["baseline"]["flops"] == runs["tst"]["flops"]  # equal FLOPs
    assert runs["tst"]["data_tokens"] == 8 * 32 * (4 * 6 + 6) and runs["baseline"]["data_tokens"] == 8 * 32 * 12
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert f"{runs['tst']['final_val_loss']:.4f}" in report and "Equal loss" in report
    assert "What a phase-1 step buys" in report and "phase1_step_value" in result
    verdict = "here it saves compute" if result["equal_flops_delta"] < 0 else "here it costs compute"
    assert "## Reading" in report and verdict in report
    # A second call reuses the finished runs instead of training again.
    before = (tmp_path / "cmp" / "tst" / "summary.json").stat().st_mtime
    compare(cfg, tmp_path / "cmp", command="test")
    assert (tmp_path / "cmp" / "tst" / "summary.json").stat().st_mtime == before
