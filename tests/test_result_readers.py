"""The results readers in benchmarks/: which setting counts as an arm's best."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from lr_warmup import best_setting  # noqa: E402


def cells_of(finals: dict[tuple[float, int], dict[str, float]]) -> dict:
    return {key: {seed: {"baseline": {"final": f}} for seed, f in seeds.items()} for key, seeds in finals.items()}


def test_the_best_setting_is_chosen_on_the_seeds_every_setting_ran():
    # 1e-3 has an unlucky second seed; 2e-3 has one seed only. On seed 0, 1e-3 ends lower.
    cells = cells_of({(1e-3, 50): {"0": 3.30, "1": 3.40}, (2e-3, 50): {"0": 3.32}})
    assert best_setting(cells, "baseline") == ((1e-3, 50), ["0"])
    cells = cells_of({(1e-3, 50): {"0": 3.34, "1": 3.40}, (2e-3, 50): {"0": 3.32, "1": 3.38}})
    assert best_setting(cells, "baseline") == ((2e-3, 50), ["0", "1"])


def test_without_a_shared_seed_each_setting_is_read_on_its_own_seeds():
    cells = cells_of({(1e-3, 50): {"0": 3.30}, (2e-3, 50): {"1": 3.20, "2": 3.26}})
    assert best_setting(cells, "baseline") == ((2e-3, 50), ["1", "2"])


def test_settings_where_the_run_is_missing_are_not_candidates():
    cells = cells_of({(1e-3, 50): {"0": 3.30}, (2e-3, 50): {"0": 3.20}})
    cells[(1e-3, 50)]["0"]["tst-s2-r0.2"] = {"final": 3.25}
    assert best_setting(cells, "tst-s2-r0.2") == ((1e-3, 50), ["0"])


def test_a_seed_without_its_baseline_is_read_and_paired_only_where_a_baseline_ran(tmp_path):
    from lr_warmup import load_runs, seed_gaps

    def run(cell: str, seed: int, name: str, lr: float, final: float) -> None:
        d = tmp_path / cell / "cpu-micro" / "steps6000" / f"seed{seed}" / name
        d.mkdir(parents=True)
        (d / "config.toml").write_text(f"[optim]\nlr = {lr}\nwarmup_steps = 50\n")
        (d / "summary.json").write_text(json.dumps({"final_val_loss": final}))
        (d / "metrics.jsonl").write_text("")
    run("lr5e-4-w50", 0, "baseline", 5e-4, 3.40)
    run("lr5e-4-w50", 0, "tst-s2-r0.2", 5e-4, 3.35)
    run("lr5e-4-w50", 1, "tst-s2-r0.2", 5e-4, 3.36)  # a second seed of TST alone
    run("lr2e-3-w50", 0, "baseline", 2e-3, 3.30)
    run("lr2e-3-w50", 1, "baseline", 2e-3, 3.32)
    cells = load_runs(tmp_path, "cpu-micro", 6000)
    assert sorted(cells) == [(5e-4, 50), (2e-3, 50)]
    assert set(cells[(5e-4, 50)]["1"]) == {"tst-s2-r0.2"}
    seeds, gaps, _ = seed_gaps(cells[(2e-3, 50)], cells[(5e-4, 50)], "tst-s2-r0.2")
    assert seeds == ["0", "1"] and gaps == pytest.approx([0.05, 0.04])
    seeds, gaps, _ = seed_gaps(cells[(5e-4, 50)], cells[(5e-4, 50)], "tst-s2-r0.2")
    assert seeds == ["0"] and gaps == pytest.approx([-0.05])


def test_the_equal_loss_reader_prints_each_seed_and_their_combination(tmp_path, capsys):
    from equal_loss import main
    from tstrain.studies.ladder import equal_loss

    for seed, shift in ((0, 0.02), (1, -0.02)):
        rungs = [{"steps": round(100 * m), "flops": 1e9 * m, "val_losses": [v + shift]}
                 for m, v in ((1.0, 4.0), (1.5, 3.82), (2.0, 3.7), (3.0, 3.6))]
        eq = equal_loss(rungs, {"steps": 100, "flops": 1e9, "val_losses": [3.76 + shift]}, 0.005)
        eq["noise_from"] = "evaluations within the decays"
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "comparison.json").write_text(json.dumps({"equal_loss": eq, "data": None}))
    main([str(tmp_path / "seed0"), str(tmp_path / "seed1")])
    out = capsys.readouterr().out
    assert out.count("| baseline | 150 | 1.50 |") == 2 and "## Over 2 seeds" in out
    assert f"{2.0 ** 0.5 * 1.5 ** 0.5:.2f}x" in out  # halfway between the 1.5x and 2x rungs, in log compute
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "comparison.json").write_text(json.dumps({"runs": {}}))
    with pytest.raises(SystemExit, match="no equal-loss reading"):
        main([str(tmp_path / "plain")])


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_the_headline_figure_draws_each_shorter_rung_from_its_decay_start(tmp_path):
    from equal_loss import curve, main

    seed0 = RESULTS / "equal-loss" / "seed0" / "runs"
    trunk_x, _ = curve(seed0 / "baseline-x3", longest=True)
    rung_x, rung_y = curve(seed0 / "baseline-x1.5", longest=False)
    steps = [json.loads(line)["step"] for line in (seed0 / "baseline-x1.5" / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    assert rung_x[0] > 0.79 * rung_x[-1] and len(rung_x) == sum(s >= 0.8 * 9000 for s in steps)
    assert trunk_x[0] < rung_x[0] and rung_y[-1] == pytest.approx(
        json.loads((seed0 / "baseline-x1.5" / "summary.json").read_text())["final_val_loss"])
    main([str(RESULTS / "equal-loss" / "seed0"), "--plot", str(tmp_path / "headline.png")])
    assert (tmp_path / "headline.png").read_bytes()[:4] == b"\x89PNG"


def test_the_gap_course_is_tst_minus_the_baseline_at_their_shared_evaluations(tmp_path):
    from gap_course import gap_course

    runs = (("baseline", {0: 8.0, 10: 4.0, 20: 3.5}), ("tst-s2-r0.2", {0: 8.0, 10: 4.3, 20: 3.4, 15: 3.9}))
    for name, losses in runs:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "\n".join(json.dumps({"step": s, "val_loss": v}) for s, v in losses.items()) + "\n")
        (tmp_path / name / "config.toml").write_text("[train]\nsteps = 20\n")
    x, gaps, _ = gap_course(tmp_path)
    assert x == [0.5, 1.0] and gaps == pytest.approx([0.3, -0.1])


def test_the_seed_reader_combines_the_gaps_and_refuses_other_corpora(tmp_path, capsys):
    from compare_seeds import main
    from tstrain.studies.statistics import gap_reading

    for seed, (base, tst, corpus) in enumerate(((3.80, 3.74, "a"), (3.78, 3.76, "a"), (3.8, 3.7, "b"))):
        gap = tst - base
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "comparison.json").write_text(json.dumps({
            "runs": {"baseline": {"final_val_loss": base}, "tst": {"final_val_loss": tst}}, "eval_noise": 0.01,
            "equal_flops_delta": gap, "equal_flops": {"gap": gap, "interval": [gap - 0.03, gap + 0.03],
                                                      "reading": "within noise"}, "data": {"corpus_sha256": corpus}}))
    main([str(tmp_path / "s0"), str(tmp_path / "s1")])
    both = gap_reading([-0.06, -0.02], [0.01, 0.01])
    assert both.gap == pytest.approx(-0.04)
    out = capsys.readouterr().out
    assert f"Over 2 seeds: {both.gap:+.3f} ({both.interval[0]:+.3f} to {both.interval[1]:+.3f}" in out
    with pytest.raises(SystemExit, match="different corpora"):
        main([str(tmp_path / "s0"), str(tmp_path / "s2")])
