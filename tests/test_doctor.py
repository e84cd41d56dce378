"""``tstrain doctor`` on this machine's CPU: every path that runs here checked, the tiny train resumed bit for bit."""

import json

import pytest

from tstrain.cli import main
from tstrain.doctor import BAGS, TOLERANCE, doctor, format_report
from tstrain.kernels import KERNEL_ENV
from tstrain.superposition import multi_hot_cross_entropy


@pytest.fixture(autouse=True)
def auto(monkeypatch):
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_doctor_checks_every_path_the_cpu_runs_trains_through_a_resume_and_names_the_auto_path(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["failures"] == 0
    assert set(report["versions"]) >= {"python", "torch", "cuda", "triton", "transformers", "tstrain"}
    assert report["devices"][0]["device"] == "cpu"
    cpu = [r for r in report["losses"] if r["device"] == "cpu"]
    measured = {(r["path"], r["dtype"], r["s"]) for r in cpu if r["result"] == "pass"}
    assert measured == {(p, d, s) for p in ("unfused", "chunked") for d in TOLERANCE for s in BAGS}
    for r in cpu:
        if r["result"] == "pass":
            assert r["loss_error"] <= r["allowed"][0] and r["grad_error"] <= r["allowed"][1] and r["ms"] > 0
    (triton,) = [r for r in cpu if r["path"] == "triton"]  # on the CPU it runs under Triton's interpreter only
    assert triton["result"].startswith("not run: the Triton kernel runs on CUDA devices only")
    (run,) = report["train"]
    assert run["result"] == "pass" and run["loss_path"] == "chunked" and "final weights identical" in run["detail"]
    assert 3 < run["switch_step"] < 8  # crashed in phase 1, resumed through the switch
    assert report["auto"] == [{"device": "cpu", "path": "chunked", "result": "pass",
                               "reason": "the Triton kernel runs on CUDA devices only; this is cpu"}]


def test_a_path_that_is_off_fails_its_rows_and_the_report():
    def off_by_a_percent(hidden, weight, targets):
        return multi_hot_cross_entropy(hidden @ weight.t(), targets) * 1.01

    def right(hidden, weight, targets):
        return multi_hot_cross_entropy(hidden @ weight.t(), targets)

    report = doctor(train=False, paths={"right": right, "off": off_by_a_percent})
    results = {(r["path"], r["dtype"], r["s"]): r["result"] for r in report["losses"]}
    assert set(results.values()) == {"pass", "fail"}
    assert all(result == ("fail" if path == "off" else "pass") for (path, _, _), result in results.items())
    assert report["ok"] is False and report["failures"] == len(TOLERANCE) * len(BAGS)
    text = format_report(report)
    assert "| cpu | off | fp32 | 1 | 1.0e-02 |" in text and f"{report['failures']} check(s) failed" in text


def test_a_bad_loss_path_variable_fails_the_doctor_naming_it(monkeypatch, capsys):
    monkeypatch.setenv(KERNEL_ENV, "fastest")
    assert main(["doctor", "--skip-train"]) == 1
    out = capsys.readouterr().out
    assert "auto on cpu: none (TSTRAIN_LOSS_KERNEL='fastest' is not a loss path: set it to auto, triton or chunked" \
        in out and "1 check(s) failed" in out
