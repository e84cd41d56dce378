"""What each ``tstrain`` verb does once its flags are parsed: build its settings, call one function, print."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError
from ..fileio import write_text_atomic
from ..options import from_text


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


def _config(args: argparse.Namespace, config_file: str | Path | None = None):
    """Return the verb's config: its preset, then ``config_file`` (else ``--config``), then the fields its flags set."""
    overrides = _overrides(args)
    return load_config(args.preset, config_file or args.config, overrides)


def options_of(args: argparse.Namespace):
    """Return the verb's options (the dataclass ``args.options``) with the fields its flags set."""
    given = {key.split(":", 1)[1]: value for key, value in vars(args).items()
             if key.startswith("option:") and value is not None}
    return from_text(args.options, given)


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare_data

    manifest = prepare_data(args.input, args.out, options_of(args))
    shards = {split: len(manifest["shards"][split]) for split in ("train", "val")}
    print(f"wrote {args.out}: {manifest['train_tokens']:,} training and {manifest['val_tokens']:,} validation tokens "
          f"({shards['train']} and {shards['val']} shards), vocabulary {manifest['vocab_size']}, "
          f"EOS {manifest['eos_token']!r} = {manifest['eos_id']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.loop import train
    from ..train.run_dir import config_to_resume

    config_file = config_to_resume(Path(args.out), args.config) if args.resume and not args.preset else args.config
    cfg = _config(args, config_file)
    summary = train(cfg, args.out, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, not one per process
        print(json.dumps(summary.to_dict(), indent=2))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..studies.compare import compare
    from ..studies.plans import CompareOptions

    cfg = _config(args)
    options = CompareOptions(equal_data=args.equal_data, baseline_lr=args.baseline_lr,
                             ladder=args.ladder if args.equal_loss else None,
                             command="tstrain " + " ".join(sys.argv[1:]) if args.command is None else args.command)
    compare(cfg, args.out, options)  # checks its options before anything is written
    print((Path(args.out) / "report.md").read_text())
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..studies.sweep import sweep

    sweep(_config(args), args.out, options_of(args), baseline_lr=args.baseline_lr)  # checks its grid first
    print((Path(args.out) / "sweep.md").read_text())
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from ..studies.ablate import ablate

    cfg = _config(args)
    ablate(cfg, args.out, args.runs.split(",") if args.runs else None, baseline_lr=args.baseline_lr)
    print((Path(args.out) / "ablations.md").read_text())
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from ..batch_layout import format_layout, step_layout
    from ..data.tokens import TokenData
    from ..train.run_dir import config_file_of

    if not args.run and not args.preset and not args.config:
        raise ConfigError("give a run dir, or --preset NAME (or --config FILE) with --data DIR")
    cfg = _config(args, config_file_of(Path(args.run)) if args.run else None)
    if not cfg.data.path:
        raise ConfigError("no data: pass --data DIR (a dir made by `tstrain prepare-data`)")
    layout = step_layout(cfg, TokenData(cfg.data.path), args.step, text_chars=60 if args.text else 0)
    print(json.dumps(layout, indent=2) if args.json else format_layout(layout))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from ..studies.scale import scale_study

    scale_study(args.data, args.out, options_of(args), _overrides(args))
    print((Path(args.out) / "scale.md").read_text())
    return 0


def cmd_verify_data(args: argparse.Namespace) -> int:
    from ..data.tokens import TokenData

    data = TokenData(args.data)
    top = data.verify()
    shards = [s for split in data.shards.values() for s in split]
    hashed = (f"and the SHA-256 of each of its {len(shards)} token files matches the manifest"
              if all(s.get("sha256") for s in shards) else "(the manifest predates token-file hashes)")
    print(f"verified {args.data}: {len(data.train):,} training and {len(data.val):,} validation tokens, largest ids "
          f"{top['train']} and {top['val']} inside the vocabulary of {data.vocab_size:,}, {hashed}")
    return 0


def cmd_fetch_corpus(args: argparse.Namespace) -> int:
    from ..data.corpus import fetch_corpus

    fetch_corpus(args.out, tuple(args.sources.split(",")), strict=args.strict, progress=not args.no_progress)
    return 0


def cmd_mi(args: argparse.Namespace) -> int:
    from ..mutual_information import run_mi

    r = run_mi(args.data, args.out, args.max_distance, args.sample_tokens, args.bag_size)
    f = r["fit"]
    print(f"MI(d) = {f['C0']:.4f} + {f['a']:.4f} * d^{f['k']:.4f}  (rmse {f['rmse']:.4f} nats; "
          f"paper on DCLM: 3.63 + 1.35 * d^-1.25)")
    print(f"bag weights for s={args.bag_size} (i^k, normalised): " + ", ".join(f"{w:.4f}" for w in r["weights"]))
    print(f"use them with --set tst.weights=mi --set tst.mi_exponent={f['k']:.4f}; wrote {args.out}/mi.json, mi.png")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..data.tokens import TokenData
    from ..models import model_info, model_info_text

    cfg = _config(args)
    m, note = cfg.model, ""
    vocab = m.vocab_size
    if args.data:
        data_vocab = TokenData(args.data).vocab_size
        vocab = m.vocab_for(data_vocab)
        note = f" (data: {data_vocab:,})"
    elif not vocab and not m.config_file:
        if args.vocab_size < 1:
            raise ConfigError(f"--vocab-size must be >= 1; got {args.vocab_size}")
        vocab, note = args.vocab_size, " (assumed: the preset follows the data; pass --data or --vocab-size)"
    info = model_info(m, vocab, cfg.train.seq_len)
    print(json.dumps(info, indent=2) if args.json else model_info_text(info, note))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from ..doctor import doctor, format_report

    report = doctor(train=not args.skip_train)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def cmd_export(args: argparse.Namespace) -> int:
    from ..model_io import export

    out = export(args.source, args.out)
    print(f"wrote {out}: a Hugging Face model dir (config.json, model.safetensors, tokenizer files)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ..inference import generate

    print(generate(args.model_dir, args.prompt, max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                   temperature=args.temperature, top_p=args.top_p, seed=args.seed, device=args.device))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    r = evaluate(args.model_dir, args.data, seq_len=args.seq_len, windows=args.windows, batch_size=args.batch_size,
                 device=args.device)
    print(f"next-token loss {r['loss']:.4f} nats, perplexity {r['perplexity']:.2f} "
          f"({r['windows']} validation windows of {r['seq_len']} positions, {r['tokens']:,} tokens)")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from ..evaluation import result_rows, run_lm_eval

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
        write_text_atomic(Path(args.out), json.dumps(results, indent=2, default=str) + "\n")
    return 0
