"""A run dir: what it holds, the record of what the run trains with, and every refusal to resume or reuse it.

``RUN/`` holds ``config.toml`` (the full resolved config), ``data.json`` (which data: their identity, where
they were, the reader's order, the EOS token), ``tokenizer.json`` (the run's own copy of its data's
tokenizer), ``metrics.jsonl`` (with ``tensorboard/`` and ``wandb_id`` when asked), ``checkpoints/step-N/``,
and once finished ``final/`` (a Hugging Face model dir), ``final.json`` (its files' sizes and SHA-256s, checked
by every reader of ``final/``) and ``summary.json``; ``.tstrain.lock`` while a job
writes it (``run_lock``).

A saved run differs from a config in three ways (``differences``): its settings, its data, the order its
reader read them in. Resuming it (``refuse_resume``) and reusing it in an experiment (``refuse_reuse``)
refuse the same differences, each in its own words; a checkpoint is checked again against the config its
steps were trained with (``refuse_checkpoint``), so an edited ``config.toml`` is caught too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import run_lock
from ..config import Config, resume_differences
from ..data.reader import FIRST_READER_ORDER, READER_ORDER
from ..data.tokens import TokenData
from ..errors import CheckpointError, ConfigError, DataError, RecordError, TstrainError
from ..fileio import (
    fresh_tmp,
    open_new,
    read_json_object,
    read_toml,
    refuse_link,
    sha256_file,
    write_failed,
    write_text_atomic,
)
from . import checkpoint as ckpt
from . import distributed

CONFIG = "config.toml"
DATA_IDENTITY = "data.json"  # which data the run trains on (see differences)
TOKENIZER = "tokenizer.json"  # the run's own copy of its training tokenizer, made when the run starts
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
WANDB_ID = "wandb_id"
CHECKPOINTS = "checkpoints"
FINAL = "final"
FINAL_RECORD = "final.json"  # the size and SHA-256 of each file of final/, written as final/ is put in place
SUMMARY = "summary.json"


# ----------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------


NAMES = (CONFIG, DATA_IDENTITY, TOKENIZER, METRICS, TENSORBOARD, WANDB_ID, CHECKPOINTS, FINAL, FINAL_RECORD, SUMMARY)


def config_file_of(run: Path) -> Path:
    """Return a run's ``config.toml``, or raise ConfigError naming a path that is not a run dir."""
    if not (run / CONFIG).is_file():
        raise ConfigError(f"{run} is not a run dir (no {CONFIG}); give a run dir or --preset NAME --data DIR")
    return run / CONFIG


def config_to_resume(run: Path, given: str | Path | None) -> str | Path | None:
    """Return the config file a resume of ``run`` reads: the one given, else the run's own ``config.toml``
    (``tstrain train --out RUN --resume`` continues with what the run was started with)."""
    if given or not (run / CONFIG).is_file():
        return given
    return run / CONFIG


def refuse_links(run: Path) -> None:
    """Refuse a run dir with a symbolic link at any name the run writes (``fileio.refuse_link``), before it
    writes anything: a ``final`` linked to another run's ``final/`` would overwrite that run's model."""
    for name in (*NAMES, f".{FINAL}.tmp"):
        refuse_link(run / name)


def write_record(run: Path, cfg: Config, data: TokenData) -> None:
    """Write what the run trains with: ``data.json``, ``config.toml`` and its own ``tokenizer.json``.

    ``data.json`` first: a ``config.toml`` with none beside it is then a run from before ``data.json`` was
    written (read in the first order), never one killed between the two writes.
    """
    run.mkdir(parents=True, exist_ok=True)
    refuse_links(run)
    identity = {**data.identity, "path": str(data.path.resolve()), "reader_order": READER_ORDER,
                "eos_token": data.manifest.get("eos_token")}
    write_text_atomic(run / DATA_IDENTITY, json.dumps(identity, indent=2) + "\n")
    write_text_atomic(run / CONFIG, cfg.to_toml())  # a kill mid-write must not break --resume
    keep_tokenizer(data, run)


def keep_tokenizer(data: TokenData, run: Path) -> None:
    """Copy the data's tokenizer into the run (once): the model keeps the tokenizer it was trained with
    whatever later happens to the data dir (re-prepared, moved, edited)."""
    own = run / TOKENIZER
    if own.is_file() and sha256_file(own) == data.manifest.get("tokenizer_sha256"):
        return
    tmp = fresh_tmp(refuse_link(own))
    try:
        with open(data.path / "tokenizer.json", "rb") as src, open_new(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, own)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(own, e, "the run's files as they were are kept") from None


SUMMARY_FIELDS = {"final_val_loss": (int, float), "steps": int, "switch_step": int, "data_tokens": int,
                  "flops": (int, float), "wall_time": (int, float)}


def read_summary(run: Path, fix: str) -> dict[str, Any]:
    """Return ``RUN/summary.json``, refusing with ``RecordError`` one that is not an object whose figures
    (``SUMMARY_FIELDS``, where given) are numbers, naming the file, the field and ``fix``."""
    path = run / SUMMARY
    found = read_json_object(path, RecordError, fix)
    for name, kind in SUMMARY_FIELDS.items():
        value = found.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise RecordError(f"{path}: {name} is {value!r}, not a number: the file was edited; {fix}")
    return found


# ----------------------------------------------------------------------------------------------
# How a saved run differs from a config
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Differences:
    """How a saved run differs from a config and its data; empty (false) when it may be resumed or reused."""

    settings: list[str]  # ``section.field: saved X, now Y`` for each field not free to change on resume
    data: list[str]  # the identity fields that differ; ``data.path`` for a run that recorded no identity
    data_was: str | None  # where the run's data were
    reader_order: str | None  # the order the run read its data in, when it is not this reader's
    saved: dict[str, Any] | None = None  # the run's config.toml as read (None: it holds none)

    def __bool__(self) -> bool:
        return bool(self.settings or self.data or self.reader_order)


def _saved_record(run: Path, fix: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Return the run's ``config.toml`` and ``data.json`` as saved (None for one it does not hold); a file that
    does not parse is refused, naming ``fix``."""
    config, identity = run / CONFIG, run / DATA_IDENTITY
    saved = read_toml(config, ConfigError, fix) if config.is_file() else None
    was = read_json_object(identity, DataError, fix) if identity.is_file() else None
    return saved, was


def differences(run: Path, cfg: Config, data: TokenData, fix: str) -> Differences:
    """Return how the run saved in ``run`` differs from ``cfg`` (resolved for ``data``: ``Config.resolved_for``) on
    ``data`` (nothing if it saved no run).

    Settings: ``config.resume_differences``. Data: the identity fields (``TokenData.identity``) recorded in
    ``data.json`` that differ (not the path: a moved copy is the same data); a run from before ``data.json`` was
    written is compared by its saved path. Reader order: a run that records none (its ``data.json`` names no
    order, or it has none) was read in the first one, ``FIRST_READER_ORDER``. A record that does not parse is
    refused, naming ``fix``.
    """
    saved, was = _saved_record(run, fix)
    if saved is None and was is None:
        return Differences([], [], None, None)
    settings = resume_differences(saved, cfg) if saved else []
    if was is not None:
        data_was, differ = was.get("path"), [k for k, v in data.identity.items() if k in was and was[k] != v]
    else:
        was, data_was = {}, saved.get("data", {}).get("path")
        differ = ["data.path"] if Path(data_was or "").resolve() != data.path.resolve() else []
    order = was.get("reader_order", FIRST_READER_ORDER)
    return Differences(settings, differ, data_was, order if order != READER_ORDER else None, saved)


# ----------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------


def refuse_order(order: str, what: str) -> None:
    """Refuse to resume ``what`` (a run dir, a checkpoint) whose steps read the data in another ``order``:
    going on in this reader's order would read some tokens twice in an epoch and others never."""
    if order != READER_ORDER:
        raise DataError(
            f"{what} read its data in the order {order!r}, and this tstrain reads them in {READER_ORDER!r}: "
            "resuming would reread some tokens and skip others. Finish the run with the tstrain version that "
            "started it, or start a new run in another --out"
        )


def refuse_resume(run: Path, cfg: Config, data: TokenData) -> None:
    """Refuse to resume ``run`` with ``cfg`` (resolved for ``data``) if its settings, data or reader order differ."""
    d = differences(run, cfg, data, "restore it, or start a new run in another --out")
    if d.settings:
        raise ConfigError(
            "cannot resume with a different config (" + "; ".join(d.settings) + "). "
            "Resume with the run's saved config.toml (`tstrain train --out RUN --resume` alone loads it), "
            "or start a new run in another --out"
        )
    if d.data:
        raise DataError(
            f"{run} was trained on other data than {data.path} ({', '.join(d.data)} differ; the run's "
            f"data were at {d.data_was}): resume it with that data, or start a new run in another --out"
        )
    if d.reader_order:
        refuse_order(d.reader_order, str(run))


def refuse_reuse(run: Path, cfg: Config) -> None:
    """Refuse to report the run saved in ``run`` as a run of ``cfg`` if it differs in any way that
    ``differences`` names, listing them all."""
    if not (run / CONFIG).is_file():
        return
    data = TokenData(cfg.data.path)
    d = differences(run, cfg.resolved_for(data.vocab_size), data, "delete that run dir to train it again")
    lines = list(d.settings)
    if d.data == ["data.path"]:
        lines.append(f"data.path: saved {d.data_was!r}, now {cfg.data.path!r}")
    elif d.data:
        lines.append(f"data: the run read {d.data_was}, whose tokens differ from those in {cfg.data.path}")
    if d.reader_order:
        lines.append(f"reader order: the run read its data in {d.reader_order!r}, this tstrain in {READER_ORDER!r}, "
                     "so only the tstrain version that made it can reuse it")
    if lines:
        raise ConfigError(f"{run} holds a run with other settings ({'; '.join(lines)}); "
                          "give a new --out, or delete that run dir to train it again")


def refuse_checkpoint(path: Path, order: str, trained: dict[str, Any] | None, cfg: Config) -> None:
    """Refuse to resume from the checkpoint at ``path`` if its steps read the data in another ``order``, or
    were trained with a config (recorded in its ``state.json``) that differs from ``cfg`` in a field that may
    not change on resume."""
    refuse_order(order, f"the checkpoint {path}")
    diffs = resume_differences(trained, cfg) if trained else []
    if diffs:
        raise ConfigError(
            f"cannot resume: the steps in {path} were trained with another config than this one ({'; '.join(diffs)}); "
            "put the saved values back (config.toml or the flags), or start a new run in another --out"
        )


def refuse_restart(run: Path) -> None:
    """Refuse to start ``run`` from step 0 over checkpoints it already holds."""
    if ckpt.list_checkpoints(run / CHECKPOINTS):
        raise ConfigError(f"{run} already holds checkpoints; pass --resume to continue it or choose a new --out")


def refuse_unverified(run: Path) -> None:
    """Refuse to resume ``run`` from step 0 when it holds checkpoints and none verifies."""
    root = run / CHECKPOINTS
    if ckpt.list_checkpoints(root):
        raise CheckpointError(
            f"none of the {len(ckpt.list_checkpoints(root))} checkpoints under {root} verifies "
            "(each is named in the warnings above); nothing was changed. To start over, delete that dir or train "
            "into a new --out"
        )


@contextlib.contextmanager
def job_lock(ctx: distributed.Single, run: Path):
    """Hold the run dir's exclusive lock (``run_lock.locked``) for a job of one or more processes: rank 0
    takes it for all of them, and every process stops if another job holds it."""
    with contextlib.ExitStack() as stack:
        refused = None
        if ctx.is_main:
            try:
                stack.enter_context(run_lock.locked(run, "run dir"))
            except TstrainError as e:
                refused = e
        refused = ctx.agree(refused)
        if refused is not None:
            raise refused
        yield
