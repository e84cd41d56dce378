"""The GPU scripts on the CPU: every section of check.sh in its dry run, and a missing data dir refused."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_section_on_the_cpu_in_its_dry_run(data_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable, "BUDGET": "900"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "check.sh"), str(data_dir)], env=env,
                          capture_output=True, text=True, timeout=1000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    sections = ("correctness", "speed", "kernels", "peer", "memory", "compare")
    assert summary["dry_run"] is True and summary["sections"] == {name: "ok" for name in sections}
    correctness = (out / "correctness.txt").read_text()
    assert "auto on cpu: chunked" in correctness and "all checks passed" in correctness  # tstrain doctor
    (result,) = re.findall(r"^\d+ passed.*$", correctness, re.MULTILINE)  # the cuda-marked tests ran on the CPU,
    assert "skipped" not in result and "failed" not in result and "deselected" not in result  # every one of them
    speed = (out / "speed.md").read_text()
    assert all(f"| {row} |" in speed for row in ("phase 2", "phase 1, s=4", "phase 1, s=8")) and "compile off" in speed
    kernels = (out / "kernels.md").read_text()
    assert "Liger fused head+CE | not run: needs CUDA" in kernels
    for s in (1, 4):  # the Triton kernel ran (through the interpreter) beside the chunked path, s = 1 and 4
        assert all(f"| {s} | {row} | " in kernels and f"| {s} | {row} | not run" not in kernels
                   for row in ("ours Triton head+MCE", "ours chunked head+MCE", "plain head+CE"))
    peer = (out / "peer.md").read_text()
    assert "| peer: compiled loop + plain CE (dry run: Liger needs CUDA) |" in peer
    assert all(f"| {row} |" in peer for row in ("tstrain phase 2", "tstrain phase 1, s=4", "loss_chunk_size"))
    assert "activation checkpointing" in peer
    assert (out / "memory.md").read_text().count("| tiny-llama |") == 6
    assert "What a phase-1 step buys" in (out / "compare_report.md").read_text()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]  # nothing half-written


@pytest.mark.parametrize("script", ["check.py", "evidence.py"])
@pytest.mark.parametrize("made", [False, True])
def test_the_gpu_scripts_refuse_a_missing_data_dir_in_one_line(tmp_path, script, made):
    data = tmp_path / "data"
    if made:
        data.mkdir()  # a dir, but no prepared data in it
    env = {**os.environ, "DRY_RUN": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / script), "--out", str(tmp_path / "out"),
                           "--data", str(data)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"benchmarks/gpu/{script}: error: ") and str(data) in line and "prepare-data" in line


def test_the_torchtitan_check_refuses_a_missing_data_dir_in_one_line(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "torchtitan_check.sh"), str(tmp_path / "none")],
                          env={**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "out")}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert "torchtitan_check.sh: error:" in line and "prepare-data" in line


def test_the_all_in_one_script_runs_the_doctor_and_refuses_an_unknown_part(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    script = str(ROOT / "benchmarks" / "gpu" / "all.sh")
    refused = subprocess.run(["bash", script], env={**env, "PARTS": "doctor,nope"}, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "no part named 'nope'" in refused.stderr
    assert not (tmp_path / "out" / "doctor.json").exists()  # refused before any part ran
    done = subprocess.run(["bash", script], env={**env, "PARTS": "doctor"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "doctor.json").read_text())["ok"] is True
    assert "all checks passed" in (tmp_path / "out" / "doctor.txt").read_text()
    assert (tmp_path / "out" / "parts.txt").read_text().startswith("## doctor\ndoctor: exit 0 in ")
