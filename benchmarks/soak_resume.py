"""Soak test of crash safety: SIGKILL tiny runs at random points, resume them, compare final weights.

Each trial starts a run of the tiny preset (24 steps, switch at 12, a checkpoint every 5 steps) in
one process or under torchrun with two (gloo), kills it with SIGKILL once or twice, then resumes it
with ``--resume`` until it finishes, and checks that the final weights are bit-identical to an
uninterrupted run with the same number of processes. A kill is either

- ``timer``: SIGKILL at a random moment of the job's life (under torchrun, of one random worker), or
- ``hook``: ``TSTRAIN_FAULT`` at a random step, mid-checkpoint-write or after the step, on a random rank.

Usage: python benchmarks/soak_resume.py --kills 24 [--processes 1 2] [--seed 0] [--work DIR]
Prints one line per kill and a summary: trials tried, kills landed, trials matched.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

STEPS, SWITCH = 24, 12
FLAGS = {"train.steps": STEPS, "tst.ratio": 0.5, "train.checkpoint_every": 5, "train.keep_checkpoints": 2,
         "train.eval_every": 6, "log.every": 1}


def command(processes: int, data: Path, out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "tstrain"]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "tstrain"]
    cmd += ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--no-progress"]
    cmd += [f"--set={k}={v}" for k, v in FLAGS.items()]
    return cmd + (["--resume"] if resume else [])


def environment(fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TSTRAIN_FAULT", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env["TSTRAIN_FAULT"] = fault
    return env


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_once(processes: int, data: Path, out: Path, resume: bool, fault: str | None = None,
             kill_after: float | None = None, rng: random.Random | None = None) -> tuple[int, bool]:
    """Run the job once; return (exit code, whether our timer's SIGKILL landed before it ended)."""
    proc = subprocess.Popen(command(processes, data, out, resume), env=environment(fault),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    landed = False
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            workers = children(proc.pid) if processes > 1 else [proc.pid]
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
                landed = True
    return proc.wait(timeout=600), landed


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def prepared_data(work: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_corpus  # the test suite's toy corpus
    from tstrain.data.prepare import PrepareOptions, prepare_data

    out = work / "data"
    prepare_data([make_corpus(work / "corpus.txt")], out, PrepareOptions(train_tokenizer=320, doc_separator="\n\n\n",
                 val_fraction=0.05, progress=False))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills to land in all (trials kill once or twice)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="world sizes, used in turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="scratch dir (default: a temporary one, removed at the end)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="tstrain-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    data = prepared_data(work)

    reference, duration = {}, {}
    for k in args.processes:
        t0 = time.perf_counter()
        code, _ = run_once(k, data, work / f"reference-{k}", resume=False)
        duration[k] = time.perf_counter() - t0
        assert code == 0, f"the uninterrupted {k}-process run failed (exit {code})"
        reference[k] = work / f"reference-{k}"
        print(f"reference run, {k} process(es): {duration[k]:.1f} s", flush=True)

    trials = matched = landed = 0
    by_kind = {}
    t_start = time.perf_counter()
    while landed < args.kills:
        k = args.processes[trials % len(args.processes)]
        trials += 1
        out = work / f"trial-{trials}"
        resume, kills, kinds = False, 0, []
        for _ in range(rng.choice([1, 1, 2])):
            if rng.random() < 0.5:
                kill_after = rng.uniform(0.5, duration[k])
                code, hit = run_once(k, data, out, resume, kill_after=kill_after, rng=rng)
                kind = f"timer@{kill_after:.1f}s"
            else:
                point, step = rng.choice(["step", "save"]), rng.randint(1, STEPS)
                if point == "save":  # only steps that write a checkpoint
                    step = rng.choice([5, 10, SWITCH, 15, 20, STEPS])
                fault = f"{point}:{step}" + (f"@{rng.randrange(k)}" if k > 1 else "")
                code, _ = run_once(k, data, out, resume, fault=fault)
                hit = code != 0
                kind = f"hook {fault}"
            resume = True
            if hit:
                kills += 1
                kinds.append(kind)
                name = "timer" if kind.startswith("timer") else kind.split()[1].split(":")[0]
                by_kind[name] = by_kind.get(name, 0) + 1
            elif code == 0:
                break  # the job finished before the kill
        code, _ = run_once(k, data, out, resume=True)
        ok = code == 0 and same_weights(out, reference[k])
        landed += kills
        matched += ok
        print(f"trial {trials}: {k} process(es), kills {kinds or ['none landed']}, "
              f"final weights {'bit-identical' if ok else 'DIFFER'}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    print(f"summary: {trials} trials tried, {landed} kills landed ({by_kind}), {matched} of {trials} trials matched "
          f"the uninterrupted run bit for bit, {time.perf_counter() - t_start:.0f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if matched == trials else 1


if __name__ == "__main__":
    sys.exit(main())
