"""Running the runs every experiment verb stands on: the baseline of a config, training or reusing a run,
and reading back what a run wrote (its evaluations, the start of its LR decay, the data it read, and the
readings of a dir of runs against its ``baseline``).

``compare``, ``sweep``, ``ablate`` and ``scale`` reuse a run the same way through ``run_or_reuse``: a saved
run is used only when its config is the one asked for now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError, RecordError
from ..fileio import read_json
from ..train.loop import train
from ..train.metrics import read_jsonl
from ..train.run_dir import CHECKPOINTS, METRICS, SUMMARY, read_summary, refuse_reuse
from .plans import baseline_lr_rule
from .statistics import StepValue, comparable, fit_curve, not_comparable_value, phase1_step_value


def baseline_of(cfg: Config, lr: float | None = None) -> Config:
    """Return the baseline of a TST config: the same run with no phase 1 (ratio 0), at ``lr`` when given
    (the baseline tuned apart from TST) and else at TST's ``optim.lr``."""
    check_baseline_lr(lr)
    return cfg.with_values({"tst.ratio": 0.0, **({} if lr is None else {"optim.lr": lr})})


def equal_data_baseline(cfg: Config, lr: float | None = None) -> Config:
    """Return the baseline of a TST config that reads as many data tokens as TST does (more steps: phase 1 reads
    ``s`` times a baseline step's tokens), at ``lr`` as in ``baseline_of``."""
    steps = round(cfg.schedule.data_tokens() / (cfg.train.batch_size * cfg.train.seq_len))
    return baseline_of(cfg, lr).with_values({"train.steps": steps})


def check_baseline_lr(lr: float | None) -> None:
    """Refuse a baseline LR that no run could train at (None: the baseline trains at TST's LR)."""
    ok, message = baseline_lr_rule(lr)
    if not ok:
        raise ConfigError(message)


def run_or_reuse(cfg: Config, run_dir: Path, **seams: Any) -> dict[str, Any]:
    """Return the summary of the run in ``run_dir``, training (or resuming) it if unfinished.

    A finished or interrupted run is used only when its saved config is the one asked for now;
    otherwise the call is refused with the differing fields, so a report never labels one run
    with another's settings. ``seams`` go to the trainer (``branch_points``).
    """
    refuse_reuse(run_dir, cfg)
    summary = run_dir / SUMMARY
    if summary.is_file():
        try:
            found = read_summary(run_dir, "delete it to finish the run again from its last checkpoint")
            print(f"{run_dir.name}: finished earlier, reusing {run_dir}")
            return found
        except RecordError as e:
            if "is not valid JSON" not in str(e):
                raise
            # cut short: the run's final checkpoint writes it again
            print(f"{run_dir.name}: {summary} does not parse; finishing the run again from its last checkpoint")
    ckpts = run_dir / CHECKPOINTS
    train(cfg, run_dir, resume=ckpts.is_dir() and any(ckpts.iterdir()), **seams)
    return read_summary(run_dir, "run the same command again")


def data_record(path: str) -> dict[str, Any] | None:
    """Return what names an experiment's data: its dir, corpus hash and token counts (None: no manifest there)."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return None
    m = read_json(manifest, ConfigError, "prepare the data again (tstrain prepare-data)")
    return {"path": str(Path(path).resolve()), "corpus_sha256": m.get("corpus_sha256"),
            "train_tokens": m.get("train_tokens"), "val_tokens": m.get("val_tokens")}


def val_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Return a run's evaluation rows (step, val loss, FLOPs, ...) from its metrics log."""
    return [r for r in read_jsonl(run_dir / METRICS) if r.get("val_loss") is not None]


def decay_start(cfg: Config) -> int:
    """Return the first step of the run's LR decay (the end of the stable phase of its WSD schedule)."""
    return cfg.train.steps - round(cfg.optim.decay_fraction * cfg.train.steps)


def step_values(runs: dict[str, Config], out: Path) -> dict[str, StepValue]:
    """Return each TST run's phase-1 step value (``statistics.phase1_step_value``) against the dir's ``baseline``:
    not comparable for a run at another LR than the baseline's."""
    base, base_lr = val_rows(out / "baseline"), runs["baseline"].optim.lr
    return {name: phase1_step_value(base, val_rows(out / name), c.switch_step, decay_start(c), c.optim.warmup_steps)
            if comparable(base_lr, c.optim.lr) else not_comparable_value()
            for name, c in runs.items() if name != "baseline"}


def lrs_of(runs: dict[str, Config]) -> dict[str, float]:
    """Return the baseline's LR and the TST runs' (one LR for all of them)."""
    return {"baseline": runs["baseline"].optim.lr,
            "tst": next(c.optim.lr for name, c in runs.items() if name != "baseline")}


def eval_noise(cfg: Config, out: Path) -> float | None:
    """Return the evaluation noise of the dir's ``baseline`` run (None with too few evaluations to fit its curve)."""
    fit = fit_curve(val_rows(out / "baseline"), cfg.optim.warmup_steps, decay_start(cfg))
    return fit.noise if fit else None
