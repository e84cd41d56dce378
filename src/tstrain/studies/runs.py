"""Running the runs every experiment verb stands on: the baseline of a config, a run to train (``RunSpec``),
training or reusing it, and reading back what a run wrote (its evaluations, the start of its LR decay, the data
it read, and the readings of a dir of runs against its ``baseline``).

``compare``, ``sweep``, ``ablate`` and ``scale`` reuse a run the same way through ``run_or_reuse``: a saved
run is used only when its config is the one asked for now.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import CheckpointError, ConfigError, RecordError
from ..fileio import read_json
from ..train.branch import branch
from ..train.loop import train
from ..train.metrics import read_jsonl
from ..train.run_dir import CHECKPOINTS, CONFIG, METRICS, SUMMARY, read_summary, refuse_reuse
from .plans import baseline_lr_rule
from .statistics import StepValue, comparable, fit_curve, not_comparable_value, phase1_step_value


@dataclass(frozen=True)
class RunSpec:
    """A run of an experiment: its name (its dir's in the experiment's dir), its label in reports and plots, its
    config, and ``branches``: the runs of the experiment that start off this one's checkpoint after a step, as
    ``(name, step)`` (``train_all``)."""

    name: str
    label: str
    config: Config
    branches: tuple[tuple[str, int], ...] = ()


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


def train_all(runs: list[RunSpec], out: Path) -> None:
    """Train (or reuse) each run in ``out/NAME``, in order. A run with ``branches`` keeps its checkpoint at each of
    their steps; once it has trained, each branch that has not started yet starts off that checkpoint
    (``train.branch``), or from step 0 where it cannot, and is trained when its own turn comes."""
    configs = {spec.name: spec.config for spec in runs}
    for spec in runs:
        fresh = [(name, at) for name, at in spec.branches if not started(out / name)]
        kept = f"; kept at steps {', '.join(str(at) for _, at in fresh)} for its branches" if fresh else ""
        print(f"{spec.name}: {spec.label}{kept}")
        run_or_reuse(spec.config, out / spec.name, branch_points={at for _, at in fresh})
        for name, at in fresh:
            _branch_or_not(out / spec.name, at, configs[name], out / name)


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
    return train(cfg, run_dir, resume=ckpts.is_dir() and any(ckpts.iterdir()), **seams).to_dict()


def started(run_dir: Path) -> bool:
    """Whether a run was started in ``run_dir`` (it holds a config, a checkpoint dir or a summary)."""
    return (run_dir / SUMMARY).is_file() or (run_dir / CONFIG).is_file() or (run_dir / CHECKPOINTS).is_dir()


def _branch_or_not(trunk_dir: Path, step: int, cfg: Config, run_dir: Path) -> None:
    """Start the run of ``cfg`` in ``run_dir`` as a branch of the run in ``trunk_dir`` after ``step`` steps, or say
    why it trains from step 0 instead."""
    try:
        branch(trunk_dir, step, cfg, run_dir)
        print(f"{run_dir.name}: branched off {trunk_dir.name} at step {step}")
    except (ConfigError, CheckpointError) as e:
        print(f"{run_dir.name}: trained from step 0 ({e})")


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
