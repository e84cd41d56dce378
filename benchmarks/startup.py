"""Trainer start-up against the size of the corpus: from a data dir to the first step's batch.

Makes synthetic data dirs of ``--gigabytes`` GB of uint16 tokens each (sparse files: no disk is
written and no token is read unless the code reads it), then times, in this process, what a run
does before its first step: open the data dir, build the window schedule and the reader, read
step 0's batch, and build the model. Opening is O(1) in the data (sizes and the manifest's
checked figures); so is the reader, whose block order is computed per block read, not stored
(``reader_memory.py`` measures it on a simulated 1T-token corpus).

    python benchmarks/startup.py --gigabytes 4,16
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import machine
from tstrain.config import load_config
from tstrain.data import TokenData
from tstrain.models import build_model
from tstrain.phases import window_schedule
from tstrain.reader import WindowReader, check_appetite


def synthetic_data_dir(root: Path, gigabytes: float, tokenizer: Path) -> Path:
    """Return a data dir holding ``gigabytes`` GB of zero tokens (a sparse train.bin) and a small val.bin."""
    out = root / f"{gigabytes:g}gb"
    out.mkdir(parents=True)
    train_tokens = int(gigabytes * 1e9) // 2
    with open(out / "train.bin", "wb") as f:
        f.truncate(train_tokens * 2)
    (out / "val.bin").write_bytes(b"\0" * 2 * 100_000)
    shutil.copy(tokenizer, out / "tokenizer.json")
    from tstrain.fileio import sha256_file

    manifest = {"format": "tstrain-tokens-v1", "dtype": "uint16", "vocab_size": 8192, "eos_token": "<|endoftext|>",
                "eos_id": 0, "max_token_id": 0, "train_tokens": train_tokens, "val_tokens": 100_000,
                "tokenizer_sha256": sha256_file(out / "tokenizer.json")}
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
    times["blocks in the permutation"] = reader.num_blocks
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gigabytes", default="4,16")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--tokenizer", default="data/corpus/tokenizer.json")
    args = ap.parse_args()
    sizes = [float(x) for x in args.gigabytes.split(",")]
    warm = load_config(args.preset)
    build_model(warm.model, 8192, warm.train.seq_len)  # the first build pays one-time imports: not start-up's
    with tempfile.TemporaryDirectory() as tmp:
        results = {g: time_startup(synthetic_data_dir(Path(tmp), g, Path(args.tokenizer)), args.preset) for g in sizes}
    print(f"# start-up before the first step, preset {args.preset}, synthetic uint16 data (sparse files); {machine()}")
    stages = list(next(iter(results.values())))
    print("| stage | " + " | ".join(f"{g:g} GB" for g in sizes) + " |")
    print("| --- |" + " --- |" * len(sizes))
    for stage in stages:
        cells = [f"{r[stage]:,}" if stage.startswith("blocks") else f"{r[stage]:.3f} s" for r in results.values()]
        print(f"| {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
