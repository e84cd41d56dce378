"""The GPU evidence run's dry run: benchmarks/gpu/evidence.sh takes its whole path on the CPU, tiny."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_evidence_run_trains_baseline_and_both_tst_arms_and_brings_back_few_files(data_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "WORK": str(tmp_path / "runs"), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "evidence.sh"), str(data_dir)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["baseline.metrics.jsonl", "curves.png", "evidence.log", "evidence.md", "scale.json",
                     "tst-s2-r0.2.metrics.jsonl", "tst-s4-r0.3.metrics.jsonl"]  # at most 8 come back
    report = (out / "evidence.md").read_text()
    assert "from a baseline tuning of 12 steps" in report and "commit " in report
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith(("| baseline |", "| tst-s"))]
    assert [r[0] for r in rows] == ["| baseline", "| tst-s2-r0.2", "| tst-s4-r0.3"]
    assert len({r[5] for r in rows}) == 1  # equal FLOPs
    assert all(float(r[4]) <= 1.0 for r in rows)  # every run within one epoch of the data
    scale = json.loads((out / "scale.json").read_text())
    assert set(scale["sizes"]["tiny"]["cells"]["24"]["0"]) == {"tst-s2-r0.2", "tst-s4-r0.3"}
