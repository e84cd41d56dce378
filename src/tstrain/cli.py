"""The ``tstrain`` command: one verb per job, each parsing its flags and calling one function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .config import ConfigError, field_help, load_config, preset_names

# Short flags for the fields people change most; every field also has --section.field.
SHORT_FLAGS = {
    "--steps": ("train.steps", int),
    "--bag-size": ("tst.bag_size", int),
    "--ratio": ("tst.ratio", float),
    "--seed": ("train.seed", int),
    "--batch-size": ("train.batch_size", int),
    "--seq-len": ("train.seq_len", int),
    "--lr": ("optim.lr", float),
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"named preset ({', '.join(preset_names())})")
    p.add_argument("--config", help="a TOML file with [section] tables, applied after the preset")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="set any config field (repeatable), e.g. --set optim.warmup_steps=50")
    for flag, (key, kind) in SHORT_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, dest=f"short:{key}", help=f"= --{key}")
    group = p.add_argument_group("config fields (defaults shown before any preset is applied)")
    for key, default, kind, _ in field_help():
        group.add_argument(f"--{key}", default=None, dest=f"field:{key}", metavar=kind.upper(),
                           help=f"(default: {default!r})")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in vars(args).items():
        if value is None:
            continue
        if key.startswith("field:") or key.startswith("short:"):
            out[key.split(":", 1)[1]] = value
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set takes SECTION.FIELD=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from .data import prepare_data

    manifest = prepare_data(
        args.input,
        args.out,
        tokenizer=args.tokenizer,
        train_tokenizer=args.train_tokenizer or 0,
        eos_token=args.eos_token,
        val_fraction=args.val_fraction,
        seed=args.seed,
        doc_separator=args.doc_separator,
        progress=not args.no_progress,
    )
    print(f"wrote {args.out}: {manifest['train_tokens']:,} training and {manifest['val_tokens']:,} validation tokens, "
          f"vocabulary {manifest['vocab_size']}, EOS {manifest['eos_token']!r} = {manifest['eos_id']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    overrides = _overrides(args)
    if args.data:
        overrides["data.path"] = args.data
    config_file = args.config
    saved = Path(args.out) / "config.toml"
    if args.resume and not args.preset and not config_file and saved.is_file():
        config_file = saved  # `tstrain train --out RUN --resume` continues with the run's own config
    cfg = load_config(args.preset, config_file, overrides)
    if args.no_progress:
        cfg.log.progress = False
    summary = train(cfg, args.out, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, not one per process
        print(json.dumps(summary.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tstrain", description="Pre-train language models with Token Superposition Training.")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("prepare-data", help="tokenize text into a packed token dir",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help=".txt, .jsonl ('text' field) or .parquet ('text' column) files")
    p.add_argument("--out", required=True, help="output data dir")
    p.add_argument("--tokenizer", help="an existing tokenizer.json")
    p.add_argument("--train-tokenizer", type=int, metavar="VOCAB", help="train a byte-level BPE of this vocabulary size")
    p.add_argument("--eos-token", help="end-of-text token (default: found among the usual names)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents held out for validation")
    p.add_argument("--doc-separator", help="split .txt files into documents on this string")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("train", help="train through phase 1 (superposition) and phase 2 (next token)")
    p.add_argument("--data", help="prepared data dir (= --data.path)")
    p.add_argument("--out", required=True, help="run dir: config.toml, metrics.jsonl, checkpoints/, final/")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .train import TrainingError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, TrainingError) as e:
        print(f"tstrain {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
