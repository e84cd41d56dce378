"""Measuring a model: next-token loss on held-out windows, and downstream tasks through lm-eval-harness.

The trainer's ``val_loss`` and ``tstrain eval`` use the same windows and the same loss, so a run's
logged value and a later evaluation of its exported model agree.

Downstream tasks use lm-eval-harness (EleutherAI), an optional extra (``pip install 'tstrain[eval]'``).
The exported model is an ordinary Hugging Face checkpoint, so lm-eval's own ``hf`` backend runs
it, the way the paper's zero-shot HellaSwag / ARC / MMLU / PIQA figures were produced. Tasks are
lm-eval's built-in ones (their datasets download from the Hugging Face hub on first use), YAML
files or folders of YAML files given with ``include_paths``, and the project's own offline smoke
task ``tstrain_smoke_mc`` (``src/tstrain/evaltasks/``), which needs no download.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .data.reader import validation_windows
from .data.tokens import TokenData
from .errors import CheckpointError, ConfigError, DataError
from .model_io import check_model_dir, check_model_tokenizer, check_run_model, load_trained_model, run_settings
from .model_parts import CausalLMParts
from .train.device import named_device
from .train.validation import validation_loss


def check_same_tokenizer(tokenizer_file: Path | None, data: TokenData) -> None:
    """Raise DataError if a model's training tokenizer is not the one the data were prepared with."""
    from tokenizers import Tokenizer

    if tokenizer_file is None:
        return  # a bare model dir without tokenizer files: nothing to compare
    try:
        ours, theirs = Tokenizer.from_file(str(tokenizer_file)), Tokenizer.from_file(str(data.path / "tokenizer.json"))
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        raise DataError(f"cannot read the model's tokenizer {tokenizer_file} ({str(e)[:200]}): it is cut short or "
                        "corrupt; export the model again") from None
    if ours.get_vocab() != theirs.get_vocab():
        raise DataError(
            f"{data.path} was prepared with another tokenizer than the model's ({tokenizer_file}): its token ids mean "
            "other text, so the loss would be meaningless; prepare the data with the model's tokenizer.json"
        )


def evaluate(model_dir: str | Path, data_dir: str | Path, seq_len: int = 0, windows: int = 0, batch_size: int = 16,
             device: str = "cpu") -> dict[str, float]:
    """Return the next-token ``loss`` (nats) and ``perplexity`` of a model dir on a data dir's validation split.

    The same fixed windows of ``seq_len + 1`` tokens and the same loss as the trainer's
    ``val_loss``. For a run (its dir, ``final/`` or a checkpoint), ``seq_len`` 0 and ``windows`` 0
    are the run's own ``train.seq_len`` and ``data.val_windows``, so on the run's data it repeats the
    run's last ``val_loss``; for another model dir, its ``max_position_embeddings`` and 64 windows.
    """
    named_device(device)
    settings = run_settings(model_dir)
    if settings is not None:
        seq_len, windows = seq_len or settings.train.seq_len, windows or settings.data.val_windows
    windows = windows or 64
    if seq_len < 0 or windows < 0 or batch_size < 1:
        raise ConfigError(f"--seq-len and --windows must be >= 0 (0: the run's own) and --batch-size >= 1; got "
                          f"{seq_len}, {windows}, {batch_size}")
    model, tokenizer_file, _ = load_trained_model(model_dir)
    model = model.to(device)
    data = TokenData(data_dir)
    parts = CausalLMParts(model)
    if data.vocab_size > parts.vocab_size:
        raise DataError(
            f"{data_dir} uses a vocabulary of {data.vocab_size} tokens but the model has {parts.vocab_size}: "
            "the data was prepared with another tokenizer; prepare it with the model's tokenizer.json"
        )
    check_same_tokenizer(tokenizer_file, data)
    positions = getattr(model.config, "max_position_embeddings", None)
    seq_len = seq_len or positions or 0
    if seq_len < 1:
        raise ConfigError("the model config gives no max_position_embeddings; pass seq_len")
    if positions and seq_len > positions:
        raise ConfigError(f"seq_len {seq_len} exceeds the model's {positions} positions; lower it")
    val = validation_windows(data.val, seq_len, windows)
    loss = validation_loss(parts, val, batch_size, torch.device(device), contextlib.nullcontext)
    return {"loss": loss, "perplexity": math.exp(loss), "windows": int(val.shape[0]), "seq_len": seq_len,
            "tokens": int(val.shape[0] * seq_len)}


TASKS_DIR = Path(__file__).with_name("evaltasks")


def run_lm_eval(
    model_dir: str | Path,
    tasks: Sequence[str],
    include_paths: Sequence[str | Path] = (),
    num_fewshot: int | None = None,
    batch_size: int = 8,
    limit: float | None = None,
    device: str = "cpu",
    standard_tasks: bool = True,
) -> dict[str, Any]:
    """Return lm-eval's results for ``tasks`` on the model dir: ``{"results": {task: {metric: value}}, ...}``.

    ``standard_tasks=False`` skips indexing lm-eval's few hundred built-in task folders (faster
    when every task is local). ``limit`` caps the documents per task (a count, or a fraction < 1).
    """
    named_device(device)
    if batch_size < 1 or (num_fewshot is not None and num_fewshot < 0) or (limit is not None and not limit > 0):
        raise ConfigError(f"--batch-size must be >= 1, --num-fewshot >= 0 and --limit > 0; got {batch_size}, "
                          f"{num_fewshot}, {limit}")
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a Hugging Face model dir; make one with `tstrain export RUN --out DIR`")
    check_model_dir(path)  # lm-eval's loader must find nothing that runs code
    check_model_tokenizer(path)  # nor, in a run's final/, a tokenizer the run did not train with
    check_run_model(path)  # nor a run's final/ that is not the model the run wrote
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError(
            "lm-eval-harness is not installed; install the optional extra with `pip install -e '.[eval]'` "
            "(or `pip install lm-eval`)"
        ) from None
    if not tasks:
        raise ValueError("no tasks given; e.g. --tasks tstrain_smoke_mc or --tasks hellaswag,arc_easy")
    manager = TaskManager(include_path=[str(TASKS_DIR), *map(str, include_paths)], include_defaults=standard_tasks)
    out = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(path), "dtype": "float32", "trust_remote_code": False},
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device,
        limit=limit,
        task_manager=manager,
        log_samples=False,
    )
    return {key: out[key] for key in ("results", "n-shot", "versions") if key in out}


def result_rows(results: dict[str, Any]) -> list[tuple[str, str, float, float | None]]:
    """Return ``(task, metric, value, stderr)`` rows of ``run_lm_eval``'s results, for printing."""
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, comma, filter_name = key.partition(",")  # metrics are keyed "acc,none"
            if not comma or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append((task, metric, float(value), float(stderr) if isinstance(stderr, (int, float)) else None))
    return rows
