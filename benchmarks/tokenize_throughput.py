"""Tokenizing throughput of ``prepare-data`` against the ``tokenizers`` library's own batch loop.

The peer: ``encode_batch`` over the same documents in the same batches (about 1 MB of text each),
taking each document's ids (``.ids``: what any user of the tokens must do) and writing nothing;
its documents are read before the clock starts. Ours: the whole ``prepare_data`` call, reading
the files, tokenizing, splitting, writing and hashing the shards (1 GB default size), with
``--workers`` 1 and 2 (worker processes start inside the clock).

Every measurement runs in a fresh process. "1 thread" sets ``TOKENIZERS_PARALLELISM=false`` and
``RAYON_NUM_THREADS=1`` there (tokenizers 0.23 honours both: the first encodes in the calling
thread, the second caps the Rust pool); our workers set the first themselves. "default threads"
leaves the library its Rust pool, one thread per core. Measurements are interleaved and the median
of ``--repeats`` is shown; the last column gives, for each repeat, the CPU cores that processes
other than the measured ones used meanwhile (from ``/proc/stat``; the machine may be shared).

    python benchmarks/tokenize_throughput.py --input 'data/raw/*/*.txt' --tokenizer data/corpus/tokenizer.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from tstrain.data import encoding
from tstrain.data.prepare import PrepareOptions, prepare_data
from tstrain.data.text_sources import iter_documents

ONE_THREAD = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}
CASES = {  # name -> (what runs, workers, one thread)
    "peer, 1 thread": ("peer", 1, True),
    "peer, default threads": ("peer", 1, False),
    "peer, 2 processes at once (1 thread each, half the text each)": ("peer", 2, True),
    "ours, --workers 1, 1 thread": ("ours", 1, True),
    "ours, --workers 1, default threads": ("ours", 1, False),
    "ours, --workers 2 (1 thread each)": ("ours", 2, True),
}


def peer(inputs: list[str], tokenizer: str, part: int = 0, parts: int = 1) -> dict:
    """Return the seconds and tokens of the library's batch loop over the documents (read beforehand),
    or over share ``part`` of ``parts`` of the batches, started when a line arrives on stdin."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    batches = [docs for _, docs in encoding.batches(iter_documents(inputs), 0, encoding.BATCH_CHARS)]
    load = [0] * parts  # largest batch first to the least loaded process: as even a split of the text as can be
    owner = {}
    for i in sorted(range(len(batches)), key=lambda i: -sum(map(len, batches[i]))):
        owner[i] = min(range(parts), key=load.__getitem__)
        load[owner[i]] += sum(map(len, batches[i]))
    batches = [b for i, b in enumerate(batches) if owner[i] == part]
    if parts > 1:
        print("ready", flush=True)
        sys.stdin.readline()
    t, tokens = time.perf_counter(), 0
    for docs in batches:
        tokens += sum(len(e.ids) + 1 for e in tok.encode_batch(docs))  # + 1: the EOS ours writes
    return {"seconds": time.perf_counter() - t, "tokens": tokens}


def ours(inputs: list[str], tokenizer: str, workers: int) -> dict:
    """Return the seconds and tokens of a whole ``prepare_data`` call into a fresh dir."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        m = prepare_data(inputs, tmp, PrepareOptions(tokenizer=tokenizer, workers=workers, progress=False,
                         overwrite=True))
        return {"seconds": time.perf_counter() - t, "tokens": m["train_tokens"] + m["val_tokens"]}


def busy_seconds() -> tuple[float, float]:
    """Return ``(CPU seconds the machine was busy or stolen, CPU seconds of this process's finished children)``."""
    import resource

    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def measure(case: str, args) -> dict:
    """Run one case with its thread settings; return its seconds, tokens and the cores that other processes
    used meanwhile (the machine may be shared)."""
    t, (busy, ours_cpu) = time.perf_counter(), busy_seconds()
    run = run_case(case, args)
    (busy2, ours_cpu2), wall = busy_seconds(), time.perf_counter() - t
    return {**run, "others": max(0.0, (busy2 - busy) - (ours_cpu2 - ours_cpu)) / wall}


def run_case(case: str, args) -> dict:
    """Run one case in fresh processes; return the seconds and tokens. Peer processes side by side start
    their loops together and take as long as the slower one."""
    kind, workers, one_thread = CASES[case]
    env = {k: v for k, v in os.environ.items() if k not in ONE_THREAD}
    env.update(ONE_THREAD if one_thread else {})
    cmd = [sys.executable, __file__, "--child", kind, "--workers", str(workers), "--tokenizer", args.tokenizer,
           "--input", *args.input]
    if kind == "ours" or workers == 1:
        return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    procs = [subprocess.Popen(cmd + ["--part", str(k)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for k in range(workers)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    runs = [json.loads(p.communicate()[0]) for p in procs]
    return {"seconds": max(r["seconds"] for r in runs), "tokens": sum(r["tokens"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", nargs="+", default=["data/raw/*/*.txt"])
    ap.add_argument("--tokenizer", default="data/corpus/tokenizer.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["peer", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run = peer(args.input, args.tokenizer, args.part, args.workers) if args.child == "peer" else \
            ours(args.input, args.tokenizer, args.workers)
        print(json.dumps(run))
        return
    from _common import machine

    docs = list(iter_documents(args.input))
    text_mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    runs = {case: [] for case in CASES}
    for _ in range(args.repeats):
        for case in CASES:
            runs[case].append(measure(case, args))
    print_table(runs, len(docs), text_mb, args, machine())


def print_table(runs: dict, documents: int, text_mb: float, args, where: str) -> None:
    seconds = {case: statistics.median(r["seconds"] for r in rs) for case, rs in runs.items()}
    tokens = {case: rs[0]["tokens"] for case, rs in runs.items()}
    base = tokens["peer, 1 thread"] / seconds["peer, 1 thread"]
    print(f"# tokenizing throughput: {documents:,} documents, {text_mb:.1f} MB of text, tokenizer {args.tokenizer}; "
          f"{where}; tokenizers {_tokenizers_version()}; median of {args.repeats}, interleaved")
    print("| run | seconds | MB/s of text | tokens/s | per worker vs the peer on 1 thread | cores used by others |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case, (_, workers, _) in CASES.items():
        rate = tokens[case] / seconds[case]
        share = f"{rate / workers / base:.2f}x" if case != "peer, 1 thread" else "1.00x"
        others = "/".join(f"{r['others']:.2f}" for r in runs[case])
        print(f"| {case} | {seconds[case]:.2f} | {text_mb / seconds[case]:.2f} | {rate:,.0f} | {share} | {others} |")
    scaling = seconds["ours, --workers 1, 1 thread"] / seconds["ours, --workers 2 (1 thread each)"]
    ceiling = seconds["peer, 1 thread"] / seconds["peer, 2 processes at once (1 thread each, half the text each)"]
    print(f"\n--workers 2 over --workers 1 (both 1 thread a worker): {scaling:.2f}x; the peer in 2 processes over 1: "
          f"{ceiling:.2f}x (what two cores give this loop here). Tokens counted alike (EOS included): "
          f"peer {tokens['peer, 1 thread']:,}, ours {tokens['ours, --workers 1, 1 thread']:,}")


def _tokenizers_version() -> str:
    import tokenizers

    return tokenizers.__version__


if __name__ == "__main__":
    main()
