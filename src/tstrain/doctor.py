"""``tstrain doctor``: what this machine runs, and whether it runs it right.

One report: the versions (Python, torch, CUDA, triton, transformers, tstrain), the devices, every
loss path that can run on each device (the unfused head + MCE, the chunked fused path, the Triton
kernel; fp32 and bf16) forward and backward against a float64 reference on small shapes (several
bag sizes, ignored targets, positions and a vocabulary that are no whole number of chunks or tiles)
with each error and time, a tiny train through the switch resumed from a crash and compared bit
for bit with the uninterrupted run, and which path ``auto`` takes on each device and why (on CUDA
the Triton kernel's self-check runs again and its cached verdict is rewritten). ``ok`` is false
when anything failed.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .extras import PREPARING, TRAINING, install_fix, not_installed
from .kernels.choice import Choice, load_triton
from .superposition import (
    DCLM_MI_EXPONENT,
    IGNORE_INDEX,
    _LinearMultiHotCE,
    _prepared_targets,
    bag_weights,
    fused_loss_path,
    multi_hot_cross_entropy,
)

# The loss checks' shapes: N positions in chunks of CHUNK (N is no multiple of it), a vocabulary of V (no
# multiple of the chunk nor of the Triton kernel's power-of-two tiles), width D, bags of each size in BAGS.
N, CHUNK, V, D, BAGS = 70, 32, 1000, 32, (1, 3, 4)
PATHS = ("unfused", "chunked", "triton")
# Allowed relative error against float64: (loss, each gradient of its largest magnitude). fp32 rounds to 24 bits;
# under bf16 autocast the logits and the gradient products are rounded to 8 bits.
TOLERANCE = {"fp32": (1e-5, 1e-4), "bf16": (2e-3, 2.0**-5)}
PACKAGES = ("torch", "triton", "transformers", "tstrain")


def versions() -> dict[str, str]:
    """Return the versions that decide what runs: Python, torch, CUDA, triton, transformers, tstrain."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda or "none (a CPU build of torch)"
    return out


def devices() -> list[dict[str, Any]]:
    """Return the CPU and each CUDA device this torch sees."""
    found = [{"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        p = torch.cuda.get_device_properties(i)
        found.append({"device": f"cuda:{i}", "name": p.name, "capability": f"sm_{p.major}{p.minor}",
                      "memory_gib": round(p.total_memory / 2**30, 1)})
    return found


def case(s: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(hidden (N, D), weight (V, D), targets (N, s))`` on ``device``: values bf16 holds exactly (so bf16
    autocast rounds only the products), a fifth of the targets ignored, one position wholly, a token twice in a bag."""
    g = torch.Generator().manual_seed(s)
    hidden = torch.randn(N, D, generator=g).bfloat16().float()
    weight = (torch.randn(V, D, generator=g) * 0.5).bfloat16().float()
    targets = torch.randint(0, V, (N, s), generator=g)
    targets[torch.rand(N, s, generator=g) < 0.2] = IGNORE_INDEX
    targets[5] = IGNORE_INDEX
    if s > 1:
        targets[0, :2] = 7
    return hidden.to(device), weight.to(device), targets.to(device)


def float64_reference(hidden, weight, targets, weights="uniform") -> tuple[float, torch.Tensor, torch.Tensor]:
    """Return ``(loss, grad hidden, grad weight)`` of the plain formula in float64 on the CPU: per slot, the mean
    CE over its valid targets, weighted by the normalised bag weights."""
    h, w = hidden.double().cpu().requires_grad_(), weight.double().cpu().requires_grad_()
    z, targets = h @ w.t(), targets.cpu()
    slot_weights = bag_weights(weights, targets.shape[1])
    loss = z.new_zeros(())
    for i in range(targets.shape[1]):
        valid = targets[:, i] != IGNORE_INDEX
        if valid.any():
            rows = z[valid]
            ce = torch.logsumexp(rows, -1) - rows.gather(-1, targets[valid, i : i + 1])[:, 0]
            loss = loss + float(slot_weights[i]) * ce.mean()
    loss.backward()
    return loss.item(), h.grad, w.grad


def _unfused(hidden, weight, targets):
    return multi_hot_cross_entropy(hidden @ weight.t(), targets, "uniform")


def _fused_with(function):
    def run(hidden, weight, targets):
        safe, scales = _prepared_targets(targets, V, "uniform", IGNORE_INDEX, DCLM_MI_EXPONENT, hidden.device)
        return function.apply(hidden, weight, safe, scales, CHUNK)
    return run


def runnable(path: str, device: torch.device) -> tuple[Any, str]:
    """Return ``(loss function of (hidden, weight, targets), "")`` for a path on ``device``, or ``(None, why not)``."""
    if path == "unfused":
        return _unfused, ""
    if path == "chunked":
        return _fused_with(_LinearMultiHotCE), ""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return None, "the Triton kernel runs on CUDA devices only (on the CPU under TRITON_INTERPRET=1)"
    kernel, why = load_triton()
    return (_fused_with(kernel), "") if kernel is not None else (None, why)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run, device: torch.device, dtype: str, s: int) -> dict[str, Any]:
    """Run one path forward and backward on one case; return its errors against float64 and its time."""
    hidden, weight, targets = case(s, device)
    ref_loss, ref_h, ref_w = float64_reference(hidden, weight, targets)
    times = []
    for _ in range(4):  # the first is a warm-up (kernel compilation, allocator)
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = run(h, w, targets)
        loss.backward()
        _sync(device)
        times.append(time.perf_counter() - start)
    loss_err = abs(loss.item() - ref_loss) / abs(ref_loss)
    grad_err = max(((got.detach().double().cpu() - ref).abs().max() / ref.abs().max()).item()
                   for got, ref in ((h.grad, ref_h), (w.grad, ref_w)))
    loss_tol, grad_tol = TOLERANCE[dtype]
    passed = loss_err <= loss_tol and grad_err <= grad_tol  # a NaN fails
    finite = {name: x if math.isfinite(x) else None for name, x in (("loss_error", loss_err), ("grad_error", grad_err))}
    return {**finite, "allowed": [loss_tol, grad_tol],
            "ms": statistics.median(times[1:]) * 1e3, "result": "pass" if passed else "fail"}


def loss_checks(device: torch.device, paths: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Return one row per path, dtype and bag size on ``device`` (``paths``: name -> loss function, for tests)."""
    rows = []
    for path in PATHS if paths is None else paths:
        run, why = runnable(path, device) if paths is None else (paths[path], "")
        if run is None:
            rows.append({"device": str(device), "path": path, "dtype": "-", "s": "-", "result": f"not run: {why}"})
            continue
        for dtype in TOLERANCE:
            for s in BAGS:
                row = {"device": str(device), "path": path, "dtype": dtype, "s": s}
                try:
                    rows.append({**row, **measure(run, device, dtype, s)})
                except Exception as e:  # a path that crashes here fails its row; the others still run
                    rows.append({**row, "result": f"fail: {type(e).__name__}: {e}"})
    return rows


class _Crash(Exception):
    """Raised by the tiny train's ``on_step`` seam: a crash after an optimizer step, before its checkpoint."""


def toy_corpus(path: Path, docs: int = 400) -> Path:
    """Write a small learnable toy language: documents of a few short sentences, split by blank lines."""
    rng = random.Random(0)
    nouns, verbs, places = ("cat", "dog", "bird", "fox", "owl"), ("sat", "ran", "slept", "hid"), ("mat", "tree", "hill")
    with open(path, "w") as f:
        for _ in range(docs):
            f.write(" ".join(f"the {rng.choice(nouns)} {rng.choice(verbs)} near the {rng.choice(places)}."
                             for _ in range(rng.randint(2, 6))) + "\n\n\n")
    return path


def _bitwise_equal(a: Path, b: Path) -> tuple[bool, bool]:
    """Return whether two runs' metrics (wall-clock fields aside) and final weights are identical."""
    from safetensors.torch import load_file

    from .train.metrics import read_jsonl

    timing = {"wall_time", "tokens_per_s", "positions_per_s", "mfu"}
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(run / "metrics.jsonl")]
            for run in (a, b)]
    wa, wb = (load_file(run / "final" / "model.safetensors") for run in (a, b))
    return rows[0] == rows[1], wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def tiny_train(device: torch.device, work: Path) -> dict[str, Any]:
    """Train the tiny preset 8 steps through the switch (after step 4) on ``device``, the fused loss on; train it
    again, crash after step 3 and resume from the step-2 checkpoint; return whether both runs are bit-identical."""
    row: dict[str, Any] = {"device": str(device), "check": "tiny train through the switch, crash and resume"}
    missing = not_installed(dict.fromkeys((*PREPARING, *TRAINING)))  # what prepare-data and train need
    if missing:
        return {**row, "result": f"not run: {install_fix(missing[0])}"}
    from contextlib import redirect_stdout
    from io import StringIO

    from .config import load_config
    from .data.prepare import PrepareOptions, prepare_data
    from .train.loop import train

    start = time.perf_counter()
    data = work / "data"
    prepare_data([toy_corpus(work / "corpus.txt")], data, PrepareOptions(train_tokenizer=320, doc_separator="\n\n\n",
                                                                         val_fraction=0.05, progress=False))
    cfg = load_config("tiny", overrides={
        "data.path": str(data), "data.val_windows": 4, "log.progress": False, "train.device": str(device),
        "train.compile": "off", "train.fused_loss": "on", "train.steps": 8, "tst.ratio": 0.5, "train.eval_every": 4,
        "train.checkpoint_every": 2})

    def crash(done: int) -> None:
        if done == 3:
            raise _Crash()

    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # on CUDA the embedding's backward adds with atomics otherwise
    try:
        with redirect_stdout(StringIO()):  # the runs' own lines; the report says what matters
            summary = train(cfg, work / "whole")
            try:
                train(cfg, work / "resumed", on_step=crash)
            except _Crash:
                pass
            train(cfg, work / "resumed", resume=True)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    metrics_equal, weights_equal = _bitwise_equal(work / "whole", work / "resumed")
    differ = [what for what, equal in (("metrics", metrics_equal), ("final weights", weights_equal)) if not equal]
    same = "identical" if not differ else "DIFFERENT: " + " and ".join(differ)
    return {**row, "result": "fail" if differ else "pass", "loss_path": summary.loss_path,
            "switch_step": cfg.switch_step,
            "detail": f"8 steps, the switch after step {cfg.switch_step}, crashed after step 3 and resumed from step "
                      f"2: metrics and final weights {same}; loss path {summary.loss_path}; final val loss "
                      f"{summary.final_val_loss:.4f}", "seconds": round(time.perf_counter() - start, 1)}


def auto_choice(device: torch.device) -> dict[str, Any]:
    """Return the path ``auto`` takes on ``device`` and why; on CUDA the kernel's self-check runs again first."""
    row: dict[str, Any] = {"device": str(device)}
    try:
        choice = fused_loss_path(device, refresh=True)
    except (ValueError, RuntimeError) as e:  # TSTRAIN_LOSS_KERNEL names no path, or one that cannot load
        return {**row, "path": "none", "reason": str(e), "result": "fail"}
    return {**row, "path": choice.path, "reason": choice.reason, "result": "pass"}


def doctor(train: bool = True, paths: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every check on this machine; return the report (``ok``: nothing failed). ``train=False`` leaves out the
    tiny train; ``paths`` (name -> loss function of ``(hidden, weight, targets)``) replaces the loss paths (tests)."""
    start = time.perf_counter()
    found = devices()
    if len(found) > 1:  # bit-identical resumption on CUDA needs cuBLAS's deterministic workspace, set before first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    targets = [torch.device(d["device"]) for d in found]
    report: dict[str, Any] = {"versions": versions(), "devices": found, "losses": [], "train": [], "auto": []}
    for device in targets:
        report["losses"] += loss_checks(device, paths)
    report["auto"] = [auto_choice(device) for device in targets]  # first: the tiny train takes the fresh verdict
    if train:
        device = targets[-1] if len(targets) == 1 else targets[1]  # the first GPU where there is one
        with tempfile.TemporaryDirectory(prefix="tstrain-doctor-") as work:
            try:
                report["train"].append(tiny_train(device, Path(work)))
            except Exception as e:  # the run's own refusal or crash: the check failed, the report goes on
                report["train"].append({"device": str(device), "check": "tiny train through the switch, crash and "
                                        "resume", "result": f"fail: {type(e).__name__}: {e}"})
    rows = report["losses"] + report["train"] + report["auto"]
    report["failures"] = sum(str(r["result"]).startswith("fail") for r in rows)
    report["ok"] = report["failures"] == 0
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def _error(x: float | None) -> str:
    return "nan" if x is None else f"{x:.1e}"


def _device_text(d: dict[str, Any]) -> str:
    if d["device"] == "cpu":
        return f"cpu ({d['name']}, {d['threads']} threads)"
    return f"{d['device']} ({d['name']}, {d['capability']}, {d['memory_gib']} GiB)"


def format_report(report: dict[str, Any]) -> str:
    """Return the report as text: versions, devices, then one table per kind of check."""
    v = report["versions"]
    lines = ["versions  " + ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "cuda", "triton", "transformers",
                                                              "tstrain")),
             "devices   " + "; ".join(_device_text(d) for d in report["devices"]), "",
             f"loss paths, forward + backward against float64: N = {N} positions in chunks of {CHUNK}, V = {V:,}, "
             f"d = {D}, a fifth of the targets ignored; errors relative (the gradient's: of its largest magnitude)",
             "", "| device | path | dtype | s | loss error | gradient error | allowed | time (ms) | result |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["losses"]:
        if "ms" in r:
            lines.append(f"| {r['device']} | {r['path']} | {r['dtype']} | {r['s']} | {_error(r['loss_error'])} | "
                         f"{_error(r['grad_error'])} | {r['allowed'][0]:.0e} / {r['allowed'][1]:.0e} | "
                         f"{r['ms']:.2f} | {r['result']} |")
        else:
            lines.append(f"| {r['device']} | {r['path']} | {r['dtype']} | {r['s']} | | | | | {r['result']} |")
    for r in report["train"]:
        lines += ["", f"{r['check']} on {r['device']}: {r['result']}"
                  + (f" in {r['seconds']} s: {r['detail']}" if "detail" in r else "")]
    lines.append("")
    lines += [f"auto on {r['device']}: {Choice(r['path'], r['reason'])}" for r in report["auto"]]
    lines += ["", f"all checks passed in {report['seconds']} s" if report["ok"] else
              f"{report['failures']} check(s) failed (in {report['seconds']} s): see the rows marked fail"]
    return "\n".join(lines)
