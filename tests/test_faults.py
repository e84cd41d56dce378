"""SIGKILL at any point, then --resume: the run ends bit-identical to one never interrupted."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli_args, launch
from tstrain.errors import RecordError
from tstrain.faults import parse
from tstrain.train.checkpoint import latest_good_checkpoint, list_checkpoints
from tstrain.train.metrics import read_jsonl

TIMING_KEYS = {"wall_time", "tokens_per_s", "positions_per_s", "mfu"}


def numbers(run):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(run / "metrics.jsonl")]


def same_weights(a, b):
    x, y = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_fault_spec_parsing():
    assert parse("save:12") == ("save", 12, None) and parse("step:7@1") == ("step", 7, 1)
    with pytest.raises(ValueError, match="POINT:STEP"):
        parse("switch")


def test_killed_in_phase_1_at_the_switch_mid_checkpoint_and_in_phase_2_resumes_bit_identically(
    data_dir, reference_run, tmp_path
):
    run, root = tmp_path / "run", tmp_path / "run" / "checkpoints"
    # phase 1; mid-write of the switch checkpoint (step 12); right after the switch checkpoint; phase 2
    for n, fault in enumerate(["step:7", "save:12", "step:12", "step:17"]):
        done = launch(cli_args(data_dir, run, resume=n > 0), fault=fault)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        if fault == "save:12":
            assert [p.name for p in root.glob(".tmp-step-00000012-*")] and not (root / "step-00000012").exists()
            assert latest_good_checkpoint(root)[0].name == "step-00000010"
        if fault == "step:12":
            assert latest_good_checkpoint(root)[0].name == "step-00000012"
    done = launch(cli_args(data_dir, run, resume=True))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout and "step 15, phase 2" in done.stdout
    assert same_weights(run, reference_run)
    assert numbers(run) == numbers(reference_run)
    # keep_checkpoints=2 plus the switch one
    assert [p.name for p in list_checkpoints(root)] == ["step-00000012", "step-00000020", "step-00000024"]


def test_a_truncated_metrics_line_from_a_kill_is_dropped_and_a_garbled_middle_line_is_refused_by_number(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    assert read_jsonl(path) == [{"step": 1}]
    path.write_text('{"step": 2, "lo\n' + json.dumps({"step": 1}) + "\n")
    with pytest.raises(RecordError, match=r"metrics.jsonl:1 is not valid JSON"):
        read_jsonl(path)
    path.write_text(json.dumps({"step": 1}) + "\n[1, 2]\n" + json.dumps({"step": 3}) + "\n")
    with pytest.raises(RecordError, match=r"metrics.jsonl:2 is not a metrics row"):
        read_jsonl(path)
