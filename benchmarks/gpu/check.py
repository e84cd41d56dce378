"""The GPU check: correctness, speed, loss kernels, the peer loop, memory and a short TST-vs-baseline on one GPU.

Run by ``benchmarks/gpu/check.sh`` (which installs carried wheels and sets the paths). Each
section runs in its own process under its own time limit and writes one file under ``--out``; a
failing, hanging or out-of-memory section is recorded (its output goes to the log) and the next one
runs on a clean device. ``DRY_RUN=1`` runs the same code paths on the CPU at tiny sizes
(the suite runs it: ``tests/test_gpu_check.py``); its figures mean nothing.

    python benchmarks/gpu/check.py --out OUT --data data/corpus [--budget 500]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

import torch  # noqa: E402

from _common import interleaved, machine, phase_loss, require_data, training_setup  # noqa: E402
from tstrain.config import load_config  # noqa: E402
from tstrain.models import flops_per_position, model_info  # noqa: E402
from tstrain.superposition import window_length  # noqa: E402
from tstrain.train.activation_checkpointing import checkpoint_activations, decoder_layers  # noqa: E402
from tstrain.train.metrics import PEAK_BF16_FLOPS  # noqa: E402

DRY = os.environ.get("DRY_RUN") == "1"
DEVICE = "cpu" if DRY else "cuda"
PRESETS = ("tiny-llama", "tiny-llama") if DRY else ("smollm2-135m", "smollm2-360m")
# Dry run: tiny windows and vocabulary; on the GPU the presets' own (L = 2048, V = 128,256).
SHAPE = {"train.seq_len": 32, "model.vocab_size": 512} if DRY else {}


def device_config(preset: str):
    """Return ``preset`` on this device in bf16 with the fused head + loss."""
    return load_config(preset, overrides={"train.device": DEVICE, "train.precision": "bf16", "train.fused_loss": "on",
                                          **SHAPE})


def env() -> dict[str, str]:
    """Return the environment for child processes: the source tree first, the dry-run flag passed on."""
    out = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    if DRY:
        out["TSTRAIN_DRY_RUN"] = "1"
    return out


def run_child(cmd: list[str], path: Path | None, timeout: float, extra_env: dict | None = None,
              append: bool = False) -> str:
    """Run a command, write (or ``append``) its output to ``path`` (or print it when None); return a status word."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                              timeout=max(timeout, 10))
        text, status = done.stdout + done.stderr, "ok" if done.returncode == 0 else f"exit {done.returncode}"
    except subprocess.TimeoutExpired as e:
        text, status = f"{_text(e.stdout)}{_text(e.stderr)}\nTIMED OUT after {timeout:.0f} s\n", "timed out"
    if path is None:
        print(text[-6000:], flush=True)
    else:
        with open(path, "a" if append else "w") as f:
            f.write(text)
    return status


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def correctness(out: Path, seconds: float) -> str:
    """``tstrain doctor`` (every loss path against float64, a tiny train resumed bit for bit, the path ``auto``
    takes after the Triton kernel's self-check), then the ``cuda``-marked tests: bf16 MCE vs float64, fused vs
    unfused, compile, resume, export + generate. Both go to ``correctness.txt``."""
    start = time.perf_counter()
    doctor = run_child([sys.executable, "-m", "tstrain", "doctor"], out / "correctness.txt", seconds / 3)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    tests = run_child(cmd, out / "correctness.txt", seconds - (time.perf_counter() - start), append=True)
    return "ok" if doctor == tests == "ok" else f"doctor {doctor}, tests {tests}"


KERNEL_METHODS = "plain CE,plain head+CE,ours chunked head+MCE,ours Triton head+MCE,Liger fused head+CE"


def kernels(out: Path, seconds: float) -> str:
    """Fused head + loss at the paper's vocabularies, bf16 inputs, s = 1 and 4: ours (Triton and chunked
    PyTorch) against Liger Kernel's fused linear CE and the unfused head + CE."""
    sizes = ["--vocabs", "1024", "--positions", "256", "--hidden", "32", "--repeats", "2", "--chunk-size", "128"] \
        if DRY else ["--vocabs", os.environ.get("KERNEL_VOCABS", "49152,128256"), "--positions", "16384",
                     "--hidden", "576", "--repeats", "5"]
    bags = os.environ.get("KERNEL_BAGS", "1,4")
    cmd = [sys.executable, "benchmarks/loss_kernels.py", "--bag-sizes", bags, "--dtype", "bfloat16",
           "--methods", KERNEL_METHODS, *sizes]
    # The dry run takes the Triton path through Triton's interpreter (correct, and slow: its times mean nothing).
    return run_child(cmd, out / "kernels.md", seconds, {"TRITON_INTERPRET": "1"} if DRY else None)


def peer(out: Path, seconds: float) -> str:
    """The field's fast loop (compiled, Liger's fused linear CE) against tstrain's phase-2 and phase-1 steps."""
    cmd = [sys.executable, "benchmarks/peer_loop.py", "--gpu", "--preset", PRESETS[0], "--repeats", "2" if DRY else "5"]
    return run_child(cmd, out / "peer.md", seconds)


def step_fn(parts, opt, cfg, autocast, B: int, s: int):
    """Return one training step (forward, backward, AdamW) of ``B`` random windows with bags of ``s``."""
    L, vocab = cfg.train.seq_len, cfg.model.vocab_size
    window = torch.randint(0, vocab, (B, window_length(L, s, "both" if s > 1 else None)[1]), device=DEVICE)
    step_cfg = cfg.with_values({"tst.bag_size": max(s, 2)})

    def step():
        with autocast():
            loss = phase_loss(parts, window, 1 if s > 1 else 2, step_cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def largest_batch(parts, opt, cfg, autocast, candidates: list[int]) -> int:
    """Return the largest micro-batch of ``candidates`` whose phase-1 (s=8) and phase-2 steps fit."""
    for B in candidates:
        try:
            for s in (8, 1):
                step_fn(parts, opt, cfg, autocast, B, s)()
            return B
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    raise RuntimeError(f"no micro-batch of {candidates} fits")


def measured_peak(n: int) -> float:
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    return 2 * n**3 / interleaved({"mm": lambda: a @ b}, 5)["mm"]


def speed(out: Path, seconds: float) -> str:
    """Step time, positions/s, data tokens/s and MFU of the smollm2-135m shape, phase 2 vs phase 1 (s=4, 8)."""
    cfg = device_config(PRESETS[0])
    vocab = cfg.model.vocab_size
    model, parts, opt, _, autocast = training_setup(cfg, vocab)
    eager = {s: step_fn(parts, opt, cfg, autocast, 2, s) for s in (1,)}
    for layer in decoder_layers(model):
        layer.compile()
    B = largest_batch(parts, opt, cfg, autocast, [4, 2] if DRY else [32, 16, 8, 4])
    L, repeats = cfg.train.seq_len, 2 if DRY else 5
    fns = {s: step_fn(parts, opt, cfg, autocast, B, s) for s in (1, 4, 8)}
    med = interleaved(fns, repeats)
    eager_t = interleaved({"eager": eager[1]}, repeats)["eager"]
    peak = measured_peak(256 if DRY else 8192)
    sheet = next((v for k, v in PEAK_BF16_FLOPS.items() if DEVICE == "cuda" and k in torch.cuda.get_device_name(0)), 0)
    flops = flops_per_position(model, L) * B * L
    lines = [f"# speed: preset {PRESETS[0]} shape, vocab {vocab}, micro-batch {B} x {L} (largest that fits), bf16 "
             f"autocast, compile on per decoder layer, fused head + loss; {machine()}",
             f"measured bf16 matmul peak {peak / 1e12:.1f} TFLOP/s; datasheet {sheet / 1e12:.0f} TFLOP/s",
             "| step | time (ms) | positions/s | data tokens/s | vs phase 2 | of the limit s | MFU (measured peak) "
             "| MFU (datasheet) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s, t in med.items():
        tokens = B * L * s / t
        ratio = tokens / (B * L / med[1])
        name = "phase 2" if s == 1 else f"phase 1, s={s}"
        datasheet = f"{flops / t / sheet:.1%}" if sheet else "n/a"
        lines.append(f"| {name} | {t * 1e3:.1f} | {B * L / t:,.0f} | {tokens:,.0f} | {ratio:.2f}x | {ratio / s:.1%} | "
                     f"{flops / t / peak:.1%} | {datasheet} |")
    lines.append(f"phase 2 with compile off (micro-batch 2): {eager_t * 1e3:.1f} ms a step, "
                 f"{2 * L / eager_t:,.0f} positions/s")
    (out / "speed.md").write_text("\n".join(lines) + "\n")
    return "ok"


def step_peak(parts, opt, cfg, autocast, B: int, s: int) -> float:
    """Return the peak bytes allocated by one training step with bags of ``s`` (1: phase 2); NaN on the CPU."""
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_fn(parts, opt, cfg, autocast, B, s)()
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else float("nan")


def memory(out: Path, seconds: float) -> str:
    """Peak GPU memory of one training step per phase (and phase 2 with activation checkpointing), against
    ``tstrain info``'s estimate."""
    L, B = (32, 2) if DRY else (2048, 8)
    lines = [f"# memory: one training step (bf16 autocast, fused head + loss, eager), L = {L}; {machine()}",
             "| preset | micro-batch | phase | peak allocated (GiB) | info's estimate: weights + grads + AdamW (GiB) | "
             "the rest: activations and workspace (GiB) |", "| --- | --- | --- | --- | --- | --- |"]
    for preset in PRESETS:
        cfg = device_config(preset)
        estimate = model_info(cfg.model, cfg.model.vocab_size, cfg.train.seq_len)["memory_bytes"]["training_total"]
        model, parts, opt, _, autocast = training_setup(cfg, cfg.model.vocab_size)
        setup = (parts, opt, cfg, autocast, B)
        peaks = {"2": step_peak(*setup, 1), f"1 (s={cfg.tst.bag_size})": step_peak(*setup, cfg.tst.bag_size)}
        checkpoint_activations(model)  # the same phase-2 step, each layer recomputing its activations
        peaks["2, activation checkpointing"] = step_peak(*setup, 1)
        lines += [f"| {preset} | {B} | {phase} | {peak / 2**30:.2f} | {estimate / 2**30:.2f} | "
                  f"{(peak - estimate) / 2**30:.2f} |" for phase, peak in peaks.items()]
        del model, parts, opt
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    return "ok"


def compare(out: Path, seconds: float, data: str) -> str:
    """A short baseline vs TST on the carried corpus, as long as the remaining minutes allow."""
    steps = 12 if DRY else (2000 if seconds > 200 else 600)
    preset = "tiny" if DRY else "cpu-small"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tstrain", "compare", "--preset", preset, "--data", data, "--out", f"{tmp}/cmp",
               "--steps", str(steps), "--no-progress", "--set", f"train.eval_every={3 if DRY else 50}",
               "--set", f"train.device={DEVICE}"]
        status = run_child(cmd, None, seconds)  # its log goes to check.log: the tool brings back 8 files at most
        if (Path(tmp) / "cmp" / "report.md").is_file():  # the phase-1 step value and the three views
            shutil.copy(Path(tmp) / "cmp" / "report.md", out / "compare_report.md")
    return status


IN_PROCESS = {"speed": speed, "memory": memory}


def section(name: str, out: Path, seconds: float, data: str) -> str:
    """Run one section: the in-process ones in a child process of this script, so a hang or OOM stays there."""
    if name in IN_PROCESS:
        return run_child([sys.executable, __file__, "--section", name, "--out", str(out)], None, seconds)
    return {"correctness": correctness, "kernels": kernels, "peer": peer}[name](out, seconds) if name != "compare" \
        else compare(out, seconds, data)


def preamble() -> None:
    """Print what the figures were measured on."""
    print(f"machine: {machine()}", flush=True)
    if DEVICE == "cuda":
        p = torch.cuda.get_device_properties(0)
        print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs; "
              f"CUDA {torch.version.cuda}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="data/corpus", help="prepared data dir for the short comparison")
    ap.add_argument("--budget", type=float, default=500.0, help="seconds for all sections together")
    ap.add_argument("--sections", default="correctness,speed,kernels,peer,memory,compare",
                    help="comma-separated sections to run (a rerun after a change need not repeat the rest)")
    ap.add_argument("--section", choices=sorted(IN_PROCESS), help=argparse.SUPPRESS)  # the child's own entry
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.section:
        IN_PROCESS[args.section](out, 0.0)
        return
    if "compare" in args.sections.split(","):  # the one section that reads data: refused before any other runs
        require_data(args.data, "benchmarks/gpu/check.py")
    if not DRY and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on the GPU machine, or DRY_RUN=1 for the CPU dry run")
    preamble()
    start, results = time.perf_counter(), {}
    plan = [("correctness", 0.25), ("speed", 0.25), ("kernels", 0.3), ("peer", 0.35), ("memory", 0.3), ("compare", 1.0)]
    wanted = args.sections.split(",")
    plan = [(name, share if name != wanted[-1] else 1.0) for name, share in plan if name in wanted]
    for name, share in plan:
        left = args.budget - (time.perf_counter() - start)
        t0 = time.perf_counter()
        try:
            # On the GPU each section gets its share of what is left; the dry run's only limit is the whole budget.
            results[name] = section(name, out, left * share if share < 1 and not DRY else left, args.data)
        except Exception:  # record it and go on: one broken section must not cost the others' figures
            results[name] = "failed"
            print(traceback.format_exc(), flush=True)
        print(f"{name}: {results[name]} in {time.perf_counter() - t0:.0f} s", flush=True)
    summary = {"device": machine(), "dry_run": DRY, "sections": results, "seconds": time.perf_counter() - start}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
