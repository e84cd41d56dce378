"""Sweeps and ablations: every grid cell is a real run, finished runs are reused."""

import json
from pathlib import Path

import pytest

from tstrain.studies.ablate import ablate
from tstrain.studies.plans import ABLATIONS, SweepOptions
from tstrain.studies.sweep import sweep


@pytest.mark.parametrize("bag_sizes, ratios, message", [
    ((), (0.5,), "--bag-sizes and --ratios each need a value"),
    ((0,), (0.5,), "--bag-sizes 0 with --ratios 0.5: bag_size must be an integer >= 1"),
])
def test_sweep_refuses_a_grid_it_cannot_train_before_anything_is_written(tiny_cfg, tmp_path, bag_sizes, ratios,
                                                                        message):
    from tstrain.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        sweep(tiny_cfg(**{"train.steps": 8}), tmp_path / "sw", SweepOptions(bag_sizes, ratios))
    assert not (tmp_path / "sw").exists()


def test_sweep_runs_the_grid_and_the_baseline_once_and_resumes(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.steps": 8, "train.eval_every": 2})
    table = sweep(cfg, tmp_path / "sw", SweepOptions((2, 4), (0.25, 0.5)))
    assert sorted(p.name for p in (tmp_path / "sw").iterdir() if p.is_dir()) == \
        ["baseline", "s2-r0.25", "s2-r0.5", "s4-r0.25", "s4-r0.5"]
    for s in (2, 4):
        for r in (0.25, 0.5):
            summary = json.loads((tmp_path / "sw" / f"s{s}-r{r:g}" / "summary.json").read_text())
            assert table.grid[str(s)][f"{r:g}"] == summary["final_val_loss"]
            assert summary["switch_step"] == round(r * 8)
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert f"{table.baseline:.4f}" in md and "| 4 |" in md and "Phase-1 step value" in md
    manifest = json.loads((Path(cfg.data.path) / "manifest.json").read_text())
    assert f"corpus hash {manifest['corpus_sha256']}" in md  # the report names the text it was trained on
    # s=2, r=0.25: switch at 2, decay from step 6 (the preset's 20%): measured from the two curves.
    from tstrain.studies.runs import val_rows
    from tstrain.studies.statistics import phase1_step_value

    measured = phase1_step_value(val_rows(tmp_path / "sw" / "baseline"), val_rows(tmp_path / "sw" / "s2-r0.25"), 2, 6,
                                 cfg.optim.warmup_steps)
    assert ({p["step"] for p in measured.course} <= {4, 6}
            and (measured.value is None) == (measured.reason is not None))
    assert table.phase1_step_value["2"]["0.25"] == measured.value
    # Eight steps give too few evaluations to estimate the noise: every gap is read as such, none as a win.
    assert table.eval_noise is None and table.gap["4"]["0.5"].reading == "noise unknown"
    assert "noise unknown" in md
    assert (tmp_path / "sw" / "sweep_heatmap.png").stat().st_size > 0
    stamp = (tmp_path / "sw" / "s4-r0.5" / "summary.json").stat().st_mtime
    assert sweep(cfg, tmp_path / "sw", SweepOptions((2, 4), (0.25, 0.5))) == table
    assert (tmp_path / "sw" / "s4-r0.5" / "summary.json").stat().st_mtime == stamp


def test_ablations_apply_their_overrides(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.steps": 8, "train.eval_every": 0, "tst.ratio": 0.5})
    result = ablate(cfg, tmp_path / "ab", ["method", "output-only", "weights-power", "step-down"])
    B, L = cfg.train.batch_size, cfg.train.seq_len
    assert result["method"].data_tokens == B * L * (4 * 4 + 4)
    assert result["output-only"].data_tokens == B * L * 8  # output side only reads no extra data
    assert result["baseline"].data_tokens == B * L * 8
    assert result["step-down"].data_tokens == B * L * (4 * 2 + 2 * 2 + 4)  # 2 steps at s=4, 2 at s=2, 4 next-token
    assert result["weights-power"].final_val_loss != result["method"].final_val_loss
    assert result["method"].val_loss_at_switch is not None and (tmp_path / "ab" / "ablations.png").is_file()
    assert "| method | (the method) |" in (tmp_path / "ab" / "ablations.md").read_text()
    assert ("phase-1 step value" in (tmp_path / "ab" / "ablations.md").read_text()
            and "phase1_step_value" in json.loads((tmp_path / "ab" / "ablations.json").read_text())["method"])
    saved = (tmp_path / "ab" / "weights-power" / "config.toml").read_text()
    assert 'weights = "power"' in saved
    with pytest.raises(ValueError, match="unknown ablation"):
        ablate(cfg, tmp_path / "ab", ["nonsense"])
    assert set(ABLATIONS) >= {"input-only", "output-only", "reset-optimizer", "restart-schedule", "weights-mi",
                              "step-down", "blend", "reinit-embeddings", "batch-expansion"}


def test_sweep_and_ablate_train_the_baseline_at_its_own_lr(tiny_cfg, tmp_path):
    from tstrain.config import load_config
    from tstrain.errors import ConfigError
    from tstrain.studies.statistics import NOT_COMPARABLE

    cfg = tiny_cfg(**{"train.steps": 8, "train.eval_every": 2, "tst.ratio": 0.5})
    table = sweep(cfg, tmp_path / "sw", SweepOptions((2,), (0.5,)), baseline_lr=6e-3)
    saved = {n: load_config(None, tmp_path / "sw" / n / "config.toml").optim.lr for n in ("baseline", "s2-r0.5")}
    assert saved == {"baseline": 6e-3, "s2-r0.5": cfg.optim.lr} and cfg.optim.lr != 6e-3
    assert table.lrs == {"baseline": 6e-3, "tst": cfg.optim.lr}
    assert table.phase1_step_value["2"]["0.5"] is None and table.gap["2"]["0.5"].reading == "noise unknown"
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert f"Each arm at its own LR: the baseline at 0.006, TST at {cfg.optim.lr:g}." in md
    assert f"Phase-1 step value: not comparable: {NOT_COMPARABLE}." in md
    with pytest.raises(ConfigError, match="optim.lr: saved 0.006"):  # not reused for a sweep at one LR
        sweep(cfg, tmp_path / "sw", SweepOptions((2,), (0.5,)))

    result = ablate(cfg, tmp_path / "ab", ["method"], baseline_lr=6e-3)
    assert result["method"].phase1_step_value is None
    md = (tmp_path / "ab" / "ablations.md").read_text()
    assert "the baseline at 0.006" in md and "| not comparable |" in md


@pytest.mark.parametrize("verb", ["sweep", "ablate"])
def test_a_baseline_lr_no_run_could_train_at_is_refused_before_a_sweep_writes(data_dir, tmp_path, capsys, verb):
    from conftest import one_line_error

    out = tmp_path / verb
    one_line_error(capsys, [verb, "--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--steps", "4",
                            "--no-progress", "--baseline-lr=-1e-3"],
                   f"tstrain {verb}: error: --baseline-lr must be a finite number above 0; got -0.001")
    assert not out.exists()
