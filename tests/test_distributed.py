"""Two processes under torchrun (gloo, FSDP2 on CPU): same numbers as one, DCP checkpoints, kills, resharding."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import RUN_FLAGS, cli_args, launch
from tstrain.config import load_config
from tstrain.model_io import export
from tstrain.train.checkpoint import latest_good_checkpoint, list_checkpoints, verify_checkpoint
from tstrain.train.loop import train
from tstrain.train.metrics import read_jsonl

TIMING_KEYS = {"wall_time", "tokens_per_s", "positions_per_s", "mfu"}
# Each of the two processes reads 4 of the 8 sequences as two micro-batches of 2.
ACCUM = {"train.grad_accum": 2}


def numbers(run):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(run / "metrics.jsonl")]


def weights(run):
    return load_file(run / "final" / "model.safetensors")


def close_curves(a, b, rel=1e-5):
    """Assert two metrics files log the same steps and accounting, with losses equal to float tolerance."""
    ra, rb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert ([(r["step"], r["phase"], r.get("data_tokens")) for r in ra]
            == [(r["step"], r["phase"], r.get("data_tokens")) for r in rb])
    for x, y in zip(ra, rb):
        for key in ("loss", "val_loss", "grad_norm"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=rel), (x["step"], key)


@pytest.fixture(scope="module")
def two_process_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    done = launch(cli_args(data_dir, out, **ACCUM), processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_two_processes_give_the_one_process_loss_curve(two_process_run, reference_run):
    run, done = two_process_run
    close_curves(reference_run, run)
    assert done.stdout.count('"final_val_loss"') == 1  # one summary, from rank 0
    a, b = weights(reference_run), weights(run)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    assert (json.loads((run / "summary.json").read_text())["data_tokens"]
            == json.loads((reference_run / "summary.json").read_text())["data_tokens"])
    # sharded checkpoints, the newest keep_checkpoints=2 plus the switch one
    root = run / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-00000012", "step-00000020", "step-00000024"]
    state = verify_checkpoint(root / "step-00000012")
    assert state["at_switch"] and state["world_size"] == 2
    files = json.loads((root / "step-00000012" / "manifest.json").read_text())["files"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "rng-0.pt", "rng-1.pt"} <= set(files)


def test_a_corrupt_shard_is_detected_and_the_previous_checkpoint_used(two_process_run, tmp_path):
    run, _ = two_process_run
    root = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", root)
    shard = root / "step-00000024" / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.warns(UserWarning,
                      match="skipping checkpoint step-00000024: .*__1_0.distcp does not match its SHA-256"):
        assert latest_good_checkpoint(root)[0].name == "step-00000020"


def test_export_of_a_sharded_checkpoint_equals_the_final_model(two_process_run, tmp_path):
    run, _ = two_process_run
    out = export(run / "checkpoints" / "step-00000024", tmp_path / "hf")
    a, b = load_file(out / "model.safetensors"), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()


def test_two_processes_killed_mid_checkpoint_and_in_phase_2_resume_bit_identically(
    data_dir, two_process_run, reference_run, tmp_path
):
    whole, _ = two_process_run
    run = tmp_path / "run"
    # rank 1 dies writing the switch checkpoint
    done = launch(cli_args(data_dir, run, **ACCUM), processes=2, fault="save:12@1")
    assert done.returncode != 0
    root = run / "checkpoints"
    assert list(root.glob(".tmp-step-00000012-*")) and latest_good_checkpoint(root)[0].name == "step-00000010"

    # world size 2 -> 1: a copy of the run resumes in one plain process from the sharded checkpoint
    shutil.copytree(run, tmp_path / "one")
    cfg = load_config(config_file=tmp_path / "one" / "config.toml",
                      overrides={"data.path": str(data_dir), "log.progress": False})
    train(cfg, tmp_path / "one", resume=True)
    close_curves(reference_run, tmp_path / "one")

    # rank 0 dies in phase 2
    done = launch(cli_args(data_dir, run, resume=True, **ACCUM), processes=2, fault="step:17@0")
    assert done.returncode != 0 and "resumed from" in done.stdout
    done = launch(cli_args(data_dir, run, resume=True, **ACCUM), processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 15, phase 2" in done.stdout
    a, b = weights(whole), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert numbers(run) == numbers(whole)


def test_a_trainer_built_without_a_context_shares_each_step_under_torchrun_as_train_does(
        data_dir, two_process_run, tmp_path):
    script = Path(__file__).with_name("dist_trainer.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(data_dir), str(tmp_path / "run"), json.dumps({**RUN_FLAGS, **ACCUM})]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=script.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(f"rank {rank} finished" in done.stdout for rank in (0, 1))
    close_curves(two_process_run[0], tmp_path / "run")
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert verify_checkpoint(newest)["world_size"] == 2  # one job of two processes, not one run per process


def test_a_non_finite_gradient_on_one_rank_stops_or_skips_on_all(data_dir, tmp_path):
    script = Path(__file__).with_name("dist_nonfinite.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(data_dir), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=script.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert (f"rank {rank} stopped skip=False: non-finite gradient at step 3 (phase 1) "
                "in model.embed_tokens.weight" in done.stdout)
        assert f"rank {rank} finished skip=True" in done.stdout
    rows = [r for r in read_jsonl(tmp_path / "skip-True" / "metrics.jsonl") if "loss" in r]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1, 1, 1]


def test_a_blended_transition_under_two_processes_matches_one(data_dir, tmp_path):
    # Mixed micro-batches (bags and next-token sequences in one forward of the FSDP2 root) with
    # gradient accumulation: process 1's slice of a blended step may hold both kinds.
    blend = {"tst.transition": "blend", "tst.transition_steps": 8, **ACCUM}
    done = launch(cli_args(data_dir, tmp_path / "two", **blend), processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    train(load_config("tiny", overrides={"data.path": str(data_dir), "log.progress": False, **RUN_FLAGS, **blend}),
          tmp_path / "one")
    close_curves(tmp_path / "one", tmp_path / "two")
    shares = [r["bag_share"] for r in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "loss" in r]
    assert any(0 < x < 1 for x in shares)


def test_activation_checkpointing_under_two_processes_matches_one_process_without_it(data_dir, reference_run, tmp_path):
    # FSDP2 gathers a layer's weights again for its backward: the recomputed forward must see them whole.
    done = launch(cli_args(data_dir, tmp_path / "two", **{"train.activation_checkpointing": "full"}), processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    close_curves(reference_run, tmp_path / "two")


def test_a_full_disk_on_one_process_stops_every_process_keeps_the_earlier_checkpoint_and_resumes_exactly(
    data_dir, two_process_run, tmp_path
):
    whole, _ = two_process_run
    run, root = tmp_path / "run", tmp_path / "run" / "checkpoints"
    done = launch(cli_args(data_dir, run, **ACCUM), processes=2, fault="full-save:10@1")
    assert done.returncode != 0 and "could not write the checkpoint of step 10" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr.split("torch/distributed/elastic")[0]  # our processes: one line each
    assert not list(root.glob(".tmp-*")) and latest_good_checkpoint(root)[0].name == "step-00000005"
    done = launch(cli_args(data_dir, run, resume=True, **ACCUM), processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = weights(whole), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
