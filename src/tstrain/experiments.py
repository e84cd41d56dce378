"""What every experiment verb stands on: training or reusing a run, the baseline of a config, and
reading val-loss curves (interpolation, the steps to reach a loss, the phase-1 step value).

``compare``, ``sweep`` (with ``ablate``) and ``scale`` are thin reports over these pieces, so a
run is reused, and a curve read, the same way in all of them.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from .config import Config, resume_differences
from .data import TokenData
from .errors import ConfigError
from .fileio import read_json
from .metrics import read_jsonl
from .reader import FIRST_READER_ORDER, READER_ORDER
from .train import DATA_IDENTITY, data_differences, train


def baseline_of(cfg: Config) -> Config:
    """Return the baseline of a TST config: the same run with no phase 1 (ratio 0)."""
    return cfg.with_values({"tst.ratio": 0.0})


def reuse_differences(run_dir: Path, cfg: Config) -> list[str]:
    """Return the settings in which the run saved in ``run_dir`` differs from ``cfg`` (fields that the
    data fills in, such as the vocabulary, and logging fields do not count), the reader's order included:
    a run that records none (or no data.json at all) was read in the first one."""
    try:
        saved = tomllib.loads((run_dir / "config.toml").read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{run_dir / 'config.toml'} is not valid TOML ({e}); delete that run dir to train it "
                          "again") from None
    follows = {"model.vocab_size": cfg.model.vocab_size == 0,
               "model.max_position_embeddings": cfg.model.max_position_embeddings == 0}
    diffs = [d for d in resume_differences(saved, cfg) if not follows.get(d.split(":")[0])]
    identity = run_dir / DATA_IDENTITY
    was = read_json(identity, ConfigError, "delete that run dir to train it again") if identity.is_file() else {}
    if identity.is_file():  # the data themselves, wherever they live now
        if data_differences(was, TokenData(cfg.data.path).identity):
            diffs.append(f"data: the run read {was.get('path')}, whose tokens differ from those in {cfg.data.path}")
    elif Path(saved.get("data", {}).get("path", "")).resolve() != Path(cfg.data.path).resolve():
        diffs.append(f"data.path: saved {saved.get('data', {}).get('path')!r}, now {cfg.data.path!r}")
    order = was.get("reader_order", FIRST_READER_ORDER)
    if order != READER_ORDER:
        diffs.append(f"reader order: the run read its data in {order!r}, this tstrain in {READER_ORDER!r}, "
                     "so only the tstrain version that made it can reuse it")
    return diffs


def run_or_reuse(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Return the summary of the run in ``run_dir``, training (or resuming) it if unfinished.

    A finished or interrupted run is used only when its saved config is the one asked for now;
    otherwise the call is refused with the differing fields, so a report never labels one run
    with another's settings.
    """
    summary = run_dir / "summary.json"
    if (run_dir / "config.toml").is_file():
        diffs = reuse_differences(run_dir, cfg)
        if diffs:
            raise ConfigError(f"{run_dir} holds a run with other settings ({'; '.join(diffs)}); "
                              "give a new --out, or delete that run dir to train it again")
    if summary.is_file():
        try:
            found = json.loads(summary.read_text())
            print(f"{run_dir.name}: finished earlier, reusing {run_dir}")
            return found
        except ValueError:  # cut short: the run's final checkpoint writes it again
            print(f"{run_dir.name}: {summary} does not parse; finishing the run again from its last checkpoint")
    ckpts = run_dir / "checkpoints"
    train(cfg, run_dir, resume=ckpts.is_dir() and any(ckpts.iterdir()))
    return json.loads(summary.read_text())


def val_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Return a run's evaluation rows (step, val loss, FLOPs, ...) from its metrics log."""
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("val_loss") is not None]


def first_reaching(rows: list[dict[str, Any]], target: float, key: str) -> float | None:
    """Return ``key`` (step, wall_time, ...) where val loss first reaches ``target``, linearly
    interpolated between the two evaluations around the crossing; None if never reached."""
    prev = None
    for row in rows:
        if row["val_loss"] <= target:
            if prev is None or prev["val_loss"] == row["val_loss"]:
                return float(row[key])
            frac = (prev["val_loss"] - target) / (prev["val_loss"] - row["val_loss"])
            return float(prev[key] + frac * (row[key] - prev[key]))
        prev = row
    return None


def value_at(rows: list[dict[str, Any]], step: int) -> float | None:
    """Return the val loss at ``step``, linearly interpolated between evaluations; None outside."""
    for a, b in zip(rows, rows[1:]):
        if a["step"] <= step <= b["step"]:
            if b["step"] == a["step"]:
                return float(a["val_loss"])
            frac = (step - a["step"]) / (b["step"] - a["step"])
            return float(a["val_loss"] + frac * (b["val_loss"] - a["val_loss"]))
    return None


def decay_start(cfg: Config) -> int:
    """Return the first step of the run's LR decay (the end of the stable phase of its WSD schedule)."""
    return cfg.train.steps - round(cfg.optim.decay_fraction * cfg.train.steps)


def phase1_step_value(base: list[dict[str, Any]], tst: list[dict[str, Any]], switch: int, decay: int) -> dict[str, Any]:
    """Return what one phase-1 step buys, in baseline steps, from the two val-loss curves.

    For each TST evaluation at step ``t`` in phase 2 before the LR decay: the baseline step ``b``
    with the same val loss (interpolated), less the ``t - switch`` phase-2 steps TST has done,
    over its ``switch`` phase-1 steps. 1.0 is break-even at equal FLOPs, above 1 TST saves
    compute, 0 means phase 1 bought nothing. The value reported is the last such evaluation's
    (the most recovered); ``value`` is None with a ``reason`` when it cannot be measured.
    """
    if switch == 0:
        return {"value": None, "reason": "the run has no phase 1", "points": []}
    evals = [r for r in tst if switch < r["step"] <= decay]
    if not evals:
        return {"value": None, "points": [], "reason": f"no TST evaluation between the switch (step {switch}) and "
                f"the LR decay (step {decay}); evaluate more often (train.eval_every)"}
    points, reason = [], None
    for r in evals:
        b = first_reaching([x for x in base if x["step"] <= decay], r["val_loss"], "step")
        if b is None:
            bound = (decay - (r["step"] - switch)) / switch
            reason = (f"at step {r['step']} TST's val loss {r['val_loss']:.4f} is below anything the baseline reaches "
                      f"before its LR decay: a phase-1 step is worth more than {bound:.2f} baseline steps")
            continue
        points.append({"step": r["step"], "val_loss": r["val_loss"], "baseline_step": b,
                       "value": (b - (r["step"] - switch)) / switch})
    last_measured = bool(points) and points[-1]["step"] == evals[-1]["step"]
    return {"value": points[-1]["value"] if last_measured else None, "reason": None if last_measured else reason,
            "points": points}
