"""The equal-loss ladder: the speedup read off baselines at longer lengths, its bounds, interval and noise."""

import json
import math

import numpy as np
import pytest

from tstrain.studies.ladder import equal_loss, final_noise, log_compute_at, non_increasing, plan_ladder

LADDER = [(1.0, 4.0), (1.25, 3.9), (1.5, 3.82), (2.0, 3.7), (3.0, 3.6)]  # (compute over TST's, final val loss)


def rungs(losses=LADDER, seeds=1, spread=0.0):
    return [{"steps": round(100 * m), "flops": 1e9 * m,
             "val_losses": [v + spread * (-1) ** k for k in range(seeds)]} for m, v in losses]


def tst(loss, seeds=1, spread=0.0):
    return {"steps": 100, "flops": 1e9, "val_losses": [loss + spread * (-1) ** k for k in range(seeds)]}


def test_non_increasing_pools_a_longer_rung_that_ended_above_a_shorter_one():
    assert non_increasing(np.array([3.0, 2.0, 2.5, 1.0])).tolist() == [3.0, 2.25, 2.25, 1.0]
    assert non_increasing(np.array([3.0, 2.0, 1.0])).tolist() == [3.0, 2.0, 1.0]


def test_the_compute_to_a_loss_is_linear_in_log_compute_between_rungs_and_infinite_off_the_ladder():
    log_c = np.log([1.0, 2.0, 4.0])
    losses = np.array([3.0, 2.0, 1.0])
    assert math.exp(log_compute_at(log_c, losses, 2.5)) == pytest.approx(math.sqrt(2))
    assert math.exp(log_compute_at(log_c, losses, 2.0)) == pytest.approx(2.0)
    assert log_compute_at(log_c, losses, 0.5) == math.inf and log_compute_at(log_c, losses, 3.5) == -math.inf


def test_the_speedup_between_two_rungs_with_its_interval_and_reading():
    r = equal_loss(rungs(), tst(3.76), noise=0.001)
    assert r["speedup"] == pytest.approx(math.sqrt(1.5 * 2.0))  # halfway in loss between 1.5x and 2x, in log compute
    lo, hi = r["interval"]
    assert 1.5 < lo < r["speedup"] < hi < 2.0 and r["verdict"] == "saves compute" and r["bound"] is None
    assert [g["steps"] for g in r["rungs"]] == [100, 125, 150, 200, 300] and r["tst"]["val_loss"] == 3.76
    assert f"{r['speedup']:.2f}x TST's compute" in r["reading"] and "saves compute" in r["reading"]
    json.dumps(r)  # what comparison.json holds
    # Under a noise as large as the ladder's steps the same point is not resolved.
    wide = equal_loss(rungs(), tst(3.76), noise=0.2)
    assert wide["speedup"] == pytest.approx(r["speedup"]) and wide["verdict"] == "not resolved"
    assert wide["interval"][0] is None or wide["interval"][0] < 1.0


def test_beyond_the_longest_rung_the_speedup_is_a_lower_bound():
    r = equal_loss(rungs(), tst(3.5), noise=0.001)
    assert r["speedup"] is None and r["bound"] == "above" and r["interval"][0] == pytest.approx(3.0)
    assert r["verdict"] == "saves compute" and "more than 3.00x" in r["reading"]


def test_behind_the_equal_flops_baseline_the_speedup_is_below_one():
    r = equal_loss(rungs(), tst(4.1), noise=0.001)
    assert r["speedup"] is None and r["bound"] == "below" and r["interval"][1] == pytest.approx(1.0)
    assert r["verdict"] == "costs compute" and "less than 1.00x" in r["reading"]
    # With a shorter rung on the ladder, a value below 1 is read off it.
    shorter = equal_loss(rungs([(0.5, 4.3), *LADDER]), tst(4.1), noise=0.001)
    assert 0.5 < shorter["speedup"] < 1.0 and shorter["verdict"] == "costs compute"


def test_the_spread_between_seeds_widens_the_interval():
    one = equal_loss(rungs(), tst(3.76), noise=0.005)
    two = equal_loss(rungs(seeds=2, spread=0.03), tst(3.76, seeds=2, spread=0.03), noise=0.005)
    assert two["seeds"] == 2 and two["speedup"] == pytest.approx(one["speedup"])  # the same means
    assert two["interval"][1] - two["interval"][0] > one["interval"][1] - one["interval"][0]
    assert equal_loss(rungs(), tst(3.76), noise=None)["interval"] is None  # one seed, no noise: no interval


def test_the_noise_of_a_final_value_is_the_scatter_within_the_decays_about_a_smooth_curve():
    rng = np.random.default_rng(1)
    curves = []
    for start, end in ((800, 1000), (1000, 1250), (1200, 1500)):
        steps = np.arange(start - 200, end + 1, 5)
        smooth = 3.0 + 0.5 * np.exp(-steps / 900) - 0.1 * np.clip((steps - start) / (end - start), 0, 1) ** 2
        loss = smooth + 0.01 * rng.standard_normal(len(steps))
        curves.append(([{"step": int(s), "val_loss": float(v)} for s, v in zip(steps, loss)], start))
    assert final_noise(curves) == pytest.approx(0.01, rel=0.25)
    assert final_noise([(rows[:3], start) for rows, start in curves]) is None  # no evaluation after any decay start


@pytest.mark.parametrize("multiples", [(1.0, 2.0), (0.0,), (2.0, 2.0), (float("nan"),), ()])
def test_a_ladder_no_run_could_make_is_refused(tiny_cfg, multiples):
    from tstrain.errors import ConfigError

    with pytest.raises(ConfigError, match="--ladder takes distinct positive multiples"):
        plan_ladder(tiny_cfg(**{"tst.ratio": 0.0}), multiples)


def test_compare_equal_loss_trains_the_ladder_as_one_trunk_with_branched_decays(tiny_cfg, tmp_path, data_dir, capsys):
    from dataclasses import replace

    from conftest import one_line_error
    from tstrain.studies.compare import compare
    from tstrain.studies.plans import CompareOptions

    cfg = tiny_cfg(**{"train.steps": 12, "tst.ratio": 0.5, "train.eval_every": 2})
    plain = compare(cfg, tmp_path / "plain", CompareOptions(command="test"))
    result = compare(cfg, tmp_path / "cmp", CompareOptions(command="test", ladder=(1.5, 2.0)))
    eq = result.equal_loss
    assert [g["steps"] for g in eq["rungs"]] == [12, 18, 24] and eq["tst"]["steps"] == 12
    assert [g["val_loss"] for g in eq["rungs"]] == [result.runs[n].final_val_loss
                                                    for n in ("baseline", "baseline-x1.5", "baseline-x2")]
    # The baseline and the 1.5x rung branched off the 2x trunk, and the branched baseline is the baseline.
    for name, at in (("baseline", 10), ("baseline-x1.5", 14)):  # each rung's decay start
        state = json.loads((tmp_path / "cmp" / name / "checkpoints" / f"step-{at:08d}" / "state.json").read_text())
        assert state["branched_from"] == {"run": str((tmp_path / "cmp" / "baseline-x2").resolve()), "step": at}
    assert result.runs["baseline"] == replace(plain.runs["baseline"], wall_time_s=result.runs["baseline"].wall_time_s)
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert eq["reading"] in report and (tmp_path / "cmp" / "equal_loss.png").stat().st_size > 0
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["equal_loss"]["rungs"][1]["steps"] == 18
    assert result.data["corpus_sha256"] and result.data["corpus_sha256"] in report
    one_line_error(capsys, ["compare", "--preset", "tiny", "--data", str(data_dir), "--out", str(tmp_path / "bad"),
                            "--steps", "12", "--no-progress", "--equal-loss", "--ladder", "1,2"],
                   "--ladder takes distinct positive multiples")
    assert not (tmp_path / "bad").exists()


def test_a_rerun_reuses_the_finished_rungs_and_branches_a_missing_one_off_the_kept_checkpoint(
        tiny_cfg, tmp_path, capsys):
    import shutil

    from tstrain.studies.compare import compare
    from tstrain.studies.ladder import training_order
    from tstrain.studies.plans import CompareOptions

    cfg = tiny_cfg(**{"train.steps": 12, "tst.ratio": 0.5, "train.eval_every": 2})
    options = CompareOptions(command="test", ladder=(1.5, 2.0))
    first = compare(cfg, tmp_path / "cmp", options)
    shutil.rmtree(tmp_path / "cmp" / "baseline-x1.5")
    capsys.readouterr()
    again = compare(cfg, tmp_path / "cmp", options)
    said = capsys.readouterr().out
    assert "baseline-x2: finished earlier" in said and "baseline: finished earlier" in said
    assert "baseline-x1.5: branched off baseline-x2 at step 14" in said
    kept = tmp_path / "cmp" / "baseline-x1.5" / "checkpoints" / "step-00000014"
    state = json.loads((kept / "state.json").read_text())
    assert state["branched_from"]["step"] == 14
    assert again.runs["baseline-x1.5"].final_val_loss == first.runs["baseline-x1.5"].final_val_loss
    # The trunk is the longest rung, and every other rung branches off it at its own decay start.
    order = training_order(plan_ladder(cfg, (0.5, 2.0, 1.5)))
    assert order[0].name == "baseline-x2" and order[0].branches == (("baseline-x0.5", 5), ("baseline-x1.5", 14))
    assert [r.branches for r in order[1:]] == [(), ()]


def test_seeds_combine_from_each_comparisons_reading_and_other_ladders_are_refused():
    from tstrain.errors import ConfigError
    from tstrain.studies.ladder import over_seeds

    a = equal_loss(rungs([(m, v + 0.02) for m, v in LADDER]), tst(3.78), noise=0.005)
    b = equal_loss(rungs([(m, v - 0.02) for m, v in LADDER]), tst(3.74), noise=0.005)
    both = over_seeds([a, b])
    assert both["seeds"] == 2 and both["per_seed"] == [a["speedup"], b["speedup"]]
    assert both["speedup"] == pytest.approx(equal_loss(rungs(), tst(3.76), noise=0.005)["speedup"])
    assert [g["val_loss"] for g in both["rungs"]] == pytest.approx([v for _, v in LADDER])
    with pytest.raises(ConfigError, match="ladders differ"):
        over_seeds([a, equal_loss(rungs(LADDER[:4]), tst(3.76), noise=0.005)])
