"""The GPU evidence run: baseline vs TST (s=2 r=0.2, s=4 r=0.3) at equal FLOPs where the body dominates.

Run by ``benchmarks/gpu/evidence.sh``. The ``gpu-small`` preset (about 25M non-embedding
parameters beside 8.4M of embedding and head) trains 3000 steps per run, each within one epoch of
the carried corpus (``data.max_epochs = 1`` refuses a run that would read more), after a short
baseline LR tuning (``LRS``; empty: the preset's LR). It is ``tstrain scale`` with one size, one
length and two arms; this script adds the curves and keeps what comes back to a few files in
``--out``: ``evidence.md``, ``scale.json``, ``curves.png`` and each run's ``metrics.jsonl``.
``DRY_RUN=1``: the same path on the CPU, the tiny preset, a few steps (its figures mean nothing).

    python benchmarks/gpu/evidence.py --out OUT --data data/corpus
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from _common import machine, require_data  # noqa: E402
from tstrain.config import load_config, padded_vocab  # noqa: E402
from tstrain.data.tokens import TokenData  # noqa: E402
from tstrain.models import model_info  # noqa: E402
from tstrain.studies.runs import val_rows  # noqa: E402
from tstrain.studies.scale import ScaleOptions, arm_name, scale_study  # noqa: E402

DRY = os.environ.get("DRY_RUN") == "1"
ARMS = [(2, 0.2), (4, 0.3)]
MIN_BODY = 20e6  # non-embedding parameters: where the paper's gains start


def settings() -> dict:
    """Return the run's settings, from the environment (``STEPS``, ``LRS``, ``TUNE_STEPS``, and ``SET``: config
    fields ``SECTION.FIELD=VALUE`` for every run, space-separated) or the defaults."""
    lrs = os.environ.get("LRS", "3e-3,6e-3" if DRY else "1e-3,2e-3,4e-3")
    fields = dict(item.split("=", 1) for item in os.environ.get("SET", "").split())
    return {"preset": "tiny" if DRY else "gpu-small", "steps": int(os.environ.get("STEPS", 24 if DRY else 3000)),
            "lrs": [float(x) for x in lrs.split(",")] if lrs else None,
            "tune_steps": int(os.environ.get("TUNE_STEPS", 12 if DRY else 600)),
            "overrides": {"data.max_epochs": 1.0, "log.progress": False, "train.device": "cpu" if DRY else "cuda",
                          **({"train.eval_every": 6} if DRY else {}), **fields}}


def body_parameters(preset: str, data: str, overrides: dict) -> tuple[int, int]:
    """Return ``(non-embedding parameters, embedding + head parameters)`` of the preset on this data."""
    cfg = load_config(preset, overrides={**overrides, "data.path": data})
    vocab = padded_vocab(TokenData(data).vocab_size, cfg.model.pad_vocab_multiple)
    counts = model_info(cfg.model, vocab, cfg.train.seq_len)["parameters"]
    ends = counts["embedding"] + (0 if cfg.model.tie_embeddings else vocab * cfg.model.hidden_size)
    return counts["total"] - ends, ends


def commit() -> str:
    """Return the source's commit (``COMMIT`` where the tree came without its git history)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return os.environ.get("COMMIT") or (done.stdout.strip() if done.returncode == 0 else "unknown")


def plot_curves(runs: dict[str, Path], switches: dict[str, int], out: Path) -> None:
    """Write ``curves.png``: next-token val loss against FLOPs and against data tokens, the switch marked (at
    the first evaluation on or after it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, run_dir in runs.items():
        rows = val_rows(run_dir)
        for ax, key in zip(axes, ("flops", "data_tokens")):
            line, = ax.plot([r[key] for r in rows], [r["val_loss"] for r in rows], label=name)
            switch = [r for r in rows if r["step"] >= switches.get(name, 10**12)]
            if switch:
                ax.axvline(switch[0][key], color=line.get_color(), linestyle=":", alpha=0.6)
    for ax, label in zip(axes, ("training FLOPs", "data tokens read")):
        ax.set_xlabel(label)
        ax.set_ylabel("next-token validation loss")
        ax.legend()
    fig.suptitle("baseline vs TST at equal FLOPs (dotted: the switch to next-token training)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


def report(work: Path, run: dict, result: dict, cell: Path, data: TokenData, seconds: float) -> str:
    """Return ``evidence.md``: what ran, on what, and the study's table with each run's reading of the data."""
    body, ends = run["body"], run["ends"]
    size = result["sizes"][run["preset"]]
    lines = [f"# GPU evidence: baseline vs TST at equal FLOPs, preset {run['preset']}",
             "", f"command: `{run['command']}`", f"commit {commit()}; {machine()}; {seconds / 60:.1f} minutes in all",
             f"model: {body / 1e6:.1f}M non-embedding parameters, {ends / 1e6:.1f}M in embedding and head "
             f"(the body is {body / (body + ends):.0%}); data: {len(data.train):,} training tokens",
             f"LR {size['lr']:g}" + (f" from a baseline tuning of {run['tune_steps']} steps (final val loss: "
                                     + ", ".join(f"{lr} {v:.4f}" for lr, v in size["lr_tuning"].items()) + ")"
                                     if "lr_tuning" in size else " (the preset's, stated)"),
             "", "| run | steps | final val loss | data tokens | epochs of the data | FLOPs | wall time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in ["baseline", *(arm_name(s, r) for s, r in ARMS)]:
        summary = json.loads((cell / name / "summary.json").read_text())
        lines.append(f"| {name} | {summary['steps']} | {summary['final_val_loss']:.4f} | {summary['data_tokens']:,} | "
                     f"{summary['data_tokens'] / len(data.train):.2f} | {summary['flops']:.3g} | "
                     f"{summary['wall_time']:.0f} |")
    lines += ["", (work / "scale.md").read_text().split("Trend of the gap")[0].rstrip()]  # one length: no trend
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="what comes back: at most 8 files")
    ap.add_argument("--data", default="data/corpus", help="prepared data dir (the default corpus: 12.4M tokens)")
    ap.add_argument("--work", default=os.environ.get("WORK", "/tmp/tstrain-evidence-runs"),
                    help="run dirs (checkpoints and all); a finished run there is reused")
    args = ap.parse_args()
    require_data(args.data, "benchmarks/gpu/evidence.py")
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    run = settings()
    run["body"], run["ends"] = body_parameters(run["preset"], args.data, run["overrides"])
    if not DRY and run["body"] < MIN_BODY:
        sys.exit(f"preset {run['preset']} has {run['body']:,} non-embedding parameters; the evidence needs 20M")
    knobs = [f"{k}={shlex.quote(os.environ[k])}" for k in ("DRY_RUN", "STEPS", "LRS", "TUNE_STEPS", "SET")
             if k in os.environ]
    run["command"] = " ".join([*knobs, "bash benchmarks/gpu/evidence.sh", args.data])
    print(f"preset {run['preset']}: {run['body']:,} non-embedding parameters, {run['ends']:,} in embedding and head; "
          f"{run['steps']} steps a run; arms {ARMS}; LRs {run['lrs']}", flush=True)
    start = time.perf_counter()
    grid = ScaleOptions(sizes=(run["preset"],), steps=(run["steps"],), arms=tuple(ARMS), seeds=(0,),
                        lrs=tuple(run["lrs"] or ()), tune_steps=run["tune_steps"], repeat_within=0.0)
    result = scale_study(args.data, work, grid, run["overrides"])
    cell = work / run["preset"] / f"steps{run['steps']}" / "seed0"
    names = ["baseline", *(arm_name(s, r) for s, r in ARMS)]
    for name in names:
        shutil.copy(cell / name / "metrics.jsonl", out / f"{name}.metrics.jsonl")
    shutil.copy(work / "scale.json", out / "scale.json")
    cfg = load_config(run["preset"], overrides={"train.steps": run["steps"]})
    switches = {arm_name(s, r): cfg.with_values({"tst.bag_size": s, "tst.ratio": r}).switch_step for s, r in ARMS}
    plot_curves({name: cell / name for name in names}, switches, out)
    text = report(work, run, result, cell, TokenData(args.data), time.perf_counter() - start)
    (out / "evidence.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
