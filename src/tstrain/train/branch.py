"""A run branched off another: a run of ``cfg`` that starts from a checkpoint of a longer run, the trunk.

Everything a step reads and does is a function of the config and the step (the data's order, the
plan, the LR), so where two configs agree on every step before ``step`` the trunk's checkpoint at
``step`` is exactly where a run of ``cfg`` would stand after ``step`` steps; the branch goes on from
there and gives that run's numbers. The use: with a Warmup-Stable-Decay LR, runs of different lengths
share their warmup and stable phase, so one trunk at the stable LR with a decay branched off at each
run's decay start gives a ladder of run lengths for little more than the longest one
(``studies.ladder``).

``branch`` checks that claim before it writes anything (``branch_differences``): the two configs may
differ only in ``train.steps`` and the fields free to change on resume, and must give every step before
the branch point the same plan, stream positions and LR. The branch's checkpoint records the config
it goes on with and the run and step it came from (``branched_from`` in its ``state.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import Config, resume_differences
from ..data.reader import FIRST_READER_ORDER, WindowSchedule
from ..data.tokens import TokenData
from ..errors import CheckpointError, ConfigError
from ..fileio import write_text_atomic
from ..run_lock import locked
from . import checkpoint as ckpt
from .metrics import read_jsonl
from .run_dir import CHECKPOINTS, CONFIG, METRICS, differences, refuse_order, refuse_restart, write_record
from .stepping import lr_at


def first_step_differing(trunk: Config, cfg: Config, step: int) -> str | None:
    """Return the first of the steps before ``step`` that a run of ``cfg`` would train otherwise than a run of
    ``trunk`` (its plan, the stream positions it reads, or its LR), in words; None when all agree."""
    a, b = trunk.schedule, cfg.schedule  # built once: each access of Config.schedule builds it anew
    reads = WindowSchedule.for_run(a), WindowSchedule.for_run(b)
    for t in range(step):
        if a.plan(t) != b.plan(t):
            return f"step {t} trains on other sequences ({a.plan(t)} against {b.plan(t)})"
        if reads[0].group_starts(t) != reads[1].group_starts(t):
            return f"step {t} reads other stream positions"
        if lr_at(trunk, t, a) != lr_at(cfg, t, b):
            return f"step {t} trains at LR {lr_at(cfg, t, b):g}, the trunk's at {lr_at(trunk, t, a):g}"
    return None


def branch_differences(trunk_dir: Path, cfg: Config, data: TokenData, step: int) -> list[str]:
    """Return why the run saved in ``trunk_dir`` after ``step`` steps is not where a run of ``cfg`` (resolved for
    ``data``: ``Config.resolved_for``) would stand after ``step`` steps (empty: it is, and ``cfg`` may branch off it
    there)."""
    d = differences(trunk_dir, cfg, data, "branch off another run, or train this one from step 0")
    found = [x for x in d.settings if not x.startswith("train.steps:")]
    if d.saved is None:
        found.append(f"the trunk holds no {CONFIG}: no run was saved there")
    if d.data:
        found.append(f"the trunk was trained on other data ({', '.join(d.data)} differ)")
    if d.reader_order:
        found.append(f"the trunk read its data in the order {d.reader_order!r}")
    if not 0 < step <= cfg.train.steps:
        found.append(f"step {step} is not inside a run of {cfg.train.steps} steps")
    if found:
        return found
    # The trunk's saved config agrees with cfg on everything but its length and what is free on resume.
    trunk_steps = int(d.saved["train"]["steps"])
    differing = first_step_differing(cfg.with_values({"train.steps": trunk_steps}), cfg, step)
    return [differing] if differing else []


def branch(trunk_dir: str | Path, step: int, cfg: Config, run_dir: str | Path) -> Path:
    """Start the run of ``cfg`` in ``run_dir`` from the checkpoint of the run in ``trunk_dir`` after ``step`` steps:
    its record, the checkpoint (its ``state.json`` naming ``cfg``'s config and where it came from) and the trunk's
    metrics up to ``step``. ``train(cfg, run_dir, resume=True)`` then finishes it. Refuses (naming why, nothing
    written) a trunk whose first ``step`` steps are not those of ``cfg``, a missing checkpoint, and a ``run_dir``
    that holds checkpoints already. Return the branch's checkpoint."""
    trunk_dir, run_dir = Path(trunk_dir), Path(run_dir)
    data = TokenData(cfg.data.path)
    resolved = cfg.resolved_for(data.vocab_size)
    why = branch_differences(trunk_dir, resolved, data, step)
    if why:
        raise ConfigError(f"cannot branch a run of {cfg.train.steps} steps off {trunk_dir} at step {step}: "
                          f"{'; '.join(why)}. Train it from step 0 instead")
    src = trunk_dir / CHECKPOINTS / f"{ckpt.PREFIX}{step:08d}"
    if not src.is_dir():
        raise CheckpointError(f"{trunk_dir} holds no checkpoint after step {step}: train the trunk with that step "
                              "among its branch points, or train this run from step 0")
    state: dict[str, Any] = ckpt.verify_checkpoint(src)
    refuse_order(state.get("reader_order", FIRST_READER_ORDER), f"the checkpoint {src}")
    trained = [x for x in resume_differences(state.get("config") or {}, resolved) if not x.startswith("train.steps:")]
    if trained:
        raise ConfigError(f"cannot branch off {src}: its steps were trained with another config ({'; '.join(trained)})")
    with locked(run_dir, "run dir") as run:
        refuse_restart(run)
        write_record(run, resolved, data)
        rows = [r for r in read_jsonl(trunk_dir / METRICS) if r["step"] <= step]
        write_text_atomic(run / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
        state = {**state, "config": resolved.to_dict(), "branch_point": False,
                 "branched_from": {"run": str(trunk_dir.resolve()), "step": step}}
        return ckpt.copy_checkpoint(src, run / CHECKPOINTS, state)
