"""Trainer start-up against the size of the corpus: from a data dir to the first step's batch.

Makes synthetic data dirs of ``--gigabytes`` GB of uint16 tokens each, in shards of
``--shard-gb`` GB as ``prepare-data`` writes them (``--shard-gb 0``: the single ``train.bin`` of
the first format), as sparse files: no disk is written and no token is read unless the code reads
it. Then times, in this process, what a run does before its first step: open the data dir, build
the window schedule and the reader, read step 0's batch, and build the model. Opening is
O(shards), not O(tokens) (sizes and the manifest's checked figures); so is the reader, whose
block order is computed per block read, not stored (``reader_memory.py`` measures it on a
simulated 1T-token corpus).

    python benchmarks/startup.py --gigabytes 4,16 --shard-gb 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine
from tstrain.config import load_config
from tstrain.data.reader import WindowReader, check_appetite
from tstrain.data.tokens import TokenData, shard_name
from tstrain.models import build_model
from tstrain.phases import window_schedule


def synthetic_data_dir(root: Path, gigabytes: float, tokenizer: Path, shard_gb: float) -> Path:
    """Return a data dir holding ``gigabytes`` GB of zero tokens in sparse shards of ``shard_gb`` GB (0: one
    v1 ``train.bin``) and a small validation shard. No hashes: ``verify-data`` is not what is timed."""
    out = root / f"{gigabytes:g}gb"
    out.mkdir(parents=True)
    train_tokens = int(gigabytes * 1e9) // 2
    per_shard = int(shard_gb * 1e9) // 2 if shard_gb else train_tokens
    sizes = [min(per_shard, train_tokens - start) for start in range(0, train_tokens, per_shard)]
    names = ["train.bin"] if not shard_gb else [shard_name("train", i) for i in range(len(sizes))]
    for name, tokens in zip(names, sizes):
        with open(out / name, "wb") as f:
            f.truncate(tokens * 2)
    val_name = "val.bin" if not shard_gb else shard_name("val", 0)
    (out / val_name).write_bytes(b"\0" * 2 * 100_000)
    shutil.copy(tokenizer, out / "tokenizer.json")
    from tstrain.fileio import sha256_file

    manifest = {"format": "tstrain-tokens-v2" if shard_gb else "tstrain-tokens-v1", "dtype": "uint16",
                "vocab_size": 8192, "eos_token": "<|endoftext|>", "eos_id": 0, "max_token_id": 0,
                "train_tokens": train_tokens, "val_tokens": 100_000,
                "tokenizer_sha256": sha256_file(out / "tokenizer.json")}
    if shard_gb:
        entry = {"documents": 1, "sha256": None, "max_token_id": 0}
        manifest["shards"] = {"train": [{"file": n, "tokens": t, **entry} for n, t in zip(names, sizes)],
                              "val": [{"file": val_name, "tokens": 100_000, **entry}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def time_startup(data_dir: Path, preset: str) -> dict[str, float]:
    """Return the seconds of each start-up stage for a run of ``preset`` on ``data_dir``."""
    times, t = {}, time.perf_counter()
    data = TokenData(data_dir)
    times["open data dir"] = time.perf_counter() - t
    cfg = load_config(preset, overrides={"data.path": str(data_dir)}).resolved_for(data.vocab_size)
    t = time.perf_counter()
    reader = WindowReader(data.train, window_schedule(cfg), cfg.train.seed)
    check_appetite(reader, cfg.train.steps, cfg.data.max_epochs)
    reader.pieces(0)
    times["schedule + reader + step 0's batch"] = time.perf_counter() - t
    t = time.perf_counter()
    build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len)
    times["build the model"] = time.perf_counter() - t
    times["blocks in an epoch"] = reader.num_blocks
    times["shards"] = len(data.shards["train"])
    return times


def process_startup(data_dir: Path, preset: str) -> float:
    """Return the wall seconds from launching a fresh Python process to its having step 0's batch and the
    model (the imports of torch and transformers included): what a user waits before the first step."""
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", str(data_dir), "--preset", preset], check=True,
                   capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gigabytes", default="4,16")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--tokenizer", default="data/corpus/tokenizer.json")
    ap.add_argument("--shard-gb", type=float, default=1.0, help="GB per training shard (0: one v1 train.bin)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # a fresh process timed from outside
    args = ap.parse_args()
    if args.child:
        time_startup(Path(args.child), args.preset)
        return
    sizes = [float(x) for x in args.gigabytes.split(",")]
    warm = load_config(args.preset)
    build_model(warm.model, 8192, warm.train.seq_len)  # the first build pays one-time imports: not start-up's
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {g: synthetic_data_dir(Path(tmp), g, Path(args.tokenizer), args.shard_gb) for g in sizes}
        results = {g: time_startup(d, args.preset) for g, d in dirs.items()}
        for g, d in dirs.items():
            results[g]["a fresh process, start to step 0's batch and model"] = process_startup(d, args.preset)
    layout = f"shards of {args.shard_gb:g} GB" if args.shard_gb else "one train.bin"
    print(f"# start-up before the first step, preset {args.preset}, synthetic uint16 data ({layout}, sparse files); "
          f"{machine()}")
    stages = list(next(iter(results.values())))
    print("| stage | " + " | ".join(f"{g:g} GB" for g in sizes) + " |")
    print("| --- |" + " --- |" * len(sizes))
    for stage in stages:
        cells = [f"{r[stage]:,}" if stage.startswith(("blocks", "shards")) else f"{r[stage]:.3f} s"
                 for r in results.values()]
        print(f"| {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
