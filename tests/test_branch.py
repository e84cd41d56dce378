"""A run branched off a longer run's checkpoint at its decay start is that run, exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tstrain.errors import CheckpointError, ConfigError
from tstrain.train.branch import branch
from tstrain.train.checkpoint import list_checkpoints
from tstrain.train.loop import train
from tstrain.train.metrics import read_jsonl

BASE = {"tst.ratio": 0.0, "optim.warmup_steps": 4, "optim.decay_fraction": 0.25, "train.eval_every": 4,
        "train.keep_checkpoints": 1}


def val_curve(run):
    return [(r["step"], r["val_loss"]) for r in read_jsonl(run / "metrics.jsonl") if r.get("val_loss") is not None]


def test_a_rung_branched_off_the_trunk_at_its_decay_start_equals_a_separate_run(tiny_cfg, tmp_path):
    trunk_cfg = tiny_cfg(**BASE, **{"train.steps": 32})  # decays from step 24
    rung_cfg = tiny_cfg(**BASE, **{"train.steps": 20})  # decays from step 15
    train(trunk_cfg, tmp_path / "trunk", branch_points=[15])
    # The branch point outlives the pruning (one checkpoint kept besides the switch's).
    assert [p.name for p in list_checkpoints(tmp_path / "trunk" / "checkpoints")] == ["step-00000015", "step-00000032"]
    branch(tmp_path / "trunk", 15, rung_cfg, tmp_path / "branched")
    state = json.loads((tmp_path / "branched" / "checkpoints" / "step-00000015" / "state.json").read_text())
    assert state["branched_from"]["step"] == 15 and state["config"]["train"]["steps"] == 20
    branched = train(rung_cfg, tmp_path / "branched", resume=True)
    separate = train(rung_cfg, tmp_path / "separate")
    assert val_curve(tmp_path / "branched") == val_curve(tmp_path / "separate")  # every evaluation, bit for bit
    assert len(val_curve(tmp_path / "separate")) == 6 and val_curve(tmp_path / "separate")[-1][0] == 20
    assert (branched.final_val_loss, branched.flops, branched.data_tokens) == (
        separate.final_val_loss, separate.flops, separate.data_tokens)
    a = load_file(tmp_path / "branched" / "final" / "model.safetensors")
    b = load_file(tmp_path / "separate" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The trunk itself went on at the stable LR past step 15: a different run from there on.
    assert val_curve(tmp_path / "trunk")[:4] == val_curve(tmp_path / "separate")[:4]
    assert val_curve(tmp_path / "trunk")[4] != val_curve(tmp_path / "separate")[4]


def test_a_branch_whose_steps_would_differ_from_the_trunks_is_refused_before_anything_is_written(tiny_cfg, tmp_path):
    trunk_cfg = tiny_cfg(**BASE, **{"train.steps": 32})
    train(trunk_cfg, tmp_path / "trunk", branch_points=[15, 18])
    # Past the rung's decay start (15) the rung's LR falls while the trunk's stays.
    with pytest.raises(ConfigError, match="step 15 trains at LR"):
        branch(tmp_path / "trunk", 18, tiny_cfg(**BASE, **{"train.steps": 20}), tmp_path / "late")
    with pytest.raises(ConfigError, match="optim.lr"):
        branch(tmp_path / "trunk", 15, tiny_cfg(**BASE, **{"train.steps": 20, "optim.lr": 1e-3}), tmp_path / "lr")
    with pytest.raises(CheckpointError, match="no checkpoint after step 14"):
        branch(tmp_path / "trunk", 14, tiny_cfg(**BASE, **{"train.steps": 19}), tmp_path / "missing")
    assert not any((tmp_path / name).exists() for name in ("late", "lr", "missing"))


def test_a_branch_off_a_dir_that_holds_no_run_is_refused(tiny_cfg, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="the trunk holds no config.toml: no run was saved there"):
        branch(tmp_path / "empty", 2, tiny_cfg(**BASE, **{"train.steps": 8}), tmp_path / "branched")
    assert not (tmp_path / "branched").exists()
