"""Which bag size each step trains with: phase 1, the switch to next-token, and its smooth variants.

``tst.transition`` picks how phase 1 hands over to phase 2 (``S`` = ``round(ratio * steps)``):

- ``hard`` (the paper): bags of ``s`` for steps ``[0, S)``, next-token from ``S`` on.
- ``step-down``: phase 1's ``S`` steps are split evenly over bag sizes ``s, s/2, s/4, ...`` down to
  the last one above 1 (4 -> 2 -> 1, 8 -> 4 -> 2 -> 1), so the bag size falls in steps.
- ``blend``: over ``transition_steps`` steps (default ``S/2``) centred on ``S``, the share of each
  batch's sequences that are bags of ``s`` falls linearly from 1 to 0; the loss is the mean over
  sequences, so the bag loss's weight falls with it while the next-token loss's rises.

Both keep the hard switch's number of bag-sequence steps (exactly for step-down; for blend exactly
when the window and the batch are even, else to rounding) and ``B*L`` positions per step, so they
compare at equal FLOPs. The TST core knows none of this: it is the trainer's
plan, a pure function of the step, so resumption is exact anywhere in a transition.
"""

from __future__ import annotations

from .config import Config
from .reader import StepPlan, WindowGroup, WindowSchedule
from .superposition import window_length


def phase_of(cfg: Config, step: int) -> int:
    """Return the phase step ``step`` (0-based) trains in: 1 before the switch, else 2 (the baseline: 2)."""
    return 1 if step < cfg.switch_step else 2


def phase_after(cfg: Config, done: int) -> int:
    """Return the phase of the last of ``done`` completed steps (a run at step 0 is in its first phase)."""
    return phase_of(cfg, max(done - 1, 0))


def is_switch(cfg: Config, step: int) -> bool:
    """Return whether ``step`` is the switch: the first phase-2 step of a run that has a phase 1."""
    return step == cfg.switch_step > 0


def phase1_geometry(cfg: Config) -> tuple[int, int]:
    """Return phase 1's ``(sequences per step, positions per sequence)``.

    ``tst.expand = "length"`` (the paper): B sequences of L positions, each a bag of s tokens.
    ``"batch"``: B*s sequences of L/s positions, so the data windows keep their L tokens; same
    positions and data tokens per step, shorter attention context.
    """
    B, L, s = cfg.train.batch_size, cfg.train.seq_len, cfg.tst.bag_size
    return (B * s, L // s) if cfg.tst.expand == "batch" else (B, L)


def bag_share(cfg: Config, step: int) -> float:
    """Return the share of ``step``'s sequences that are bags (1 in phase 1, 0 in phase 2)."""
    S = cfg.switch_step
    if cfg.tst.transition != "blend" or S == 0:
        return 1.0 if step < S else 0.0
    first, end = cfg.blend_window()
    if step < first:
        return 1.0
    if step >= end:
        return 0.0
    return 1.0 - (step - first + 0.5) / (end - first)


def step_mix(cfg: Config, step: int) -> tuple[tuple[int, int], ...]:
    """Return ``((bag_size, sequences), ...)`` of ``step``'s batch; bag size 1 is next-token."""
    B, S, s = cfg.train.batch_size, cfg.switch_step, cfg.tst.bag_size
    if cfg.tst.transition == "blend" and S > 0:
        bags = round(B * bag_share(cfg, step))
        return tuple((size, n) for size, n in ((s, bags), (1, B - bags)) if n > 0)
    if step >= S:
        return ((1, B),)
    if cfg.tst.transition == "step-down":
        sizes = cfg.step_down_sizes()
        stage = min(step * len(sizes) // S, len(sizes) - 1)
        return ((sizes[stage], B),)
    return ((s, phase1_geometry(cfg)[0]),)


def positions(cfg: Config, bag_size: int) -> int:
    """Return the positions per sequence of a group of ``bag_size`` (L, or L/s under batch expansion)."""
    if bag_size > 1 and cfg.tst.expand == "batch":
        return cfg.train.seq_len // bag_size
    return cfg.train.seq_len


def step_plan(cfg: Config, step: int) -> StepPlan:
    """Return the window groups ``step`` reads."""
    groups = []
    for size, count in step_mix(cfg, step):
        stride, window = window_length(positions(cfg, size), size, cfg.tst.variant if size > 1 else None)
        groups.append(WindowGroup(size, count, stride, window))
    return tuple(groups)


def plan_changes(cfg: Config) -> list[int]:
    """Return the steps whose batch differs from the step before: the switch, the step-down's
    stages, the blend's steps where the mix changes."""
    S = cfg.switch_step
    if S == 0:
        return []
    if cfg.tst.transition == "blend":
        first, end = cfg.blend_window()
        return [t for t in range(first, end + 1) if step_mix(cfg, t) != step_mix(cfg, t - 1)]
    if cfg.tst.transition == "step-down":
        m = len(cfg.step_down_sizes())
        return [-(-i * S // m) for i in range(1, m)] + [S]
    return [S]


def window_schedule(cfg: Config) -> WindowSchedule:
    """Return the per-step window geometry of the run."""
    return WindowSchedule(lambda step: step_plan(cfg, step), cfg.train.steps, plan_changes(cfg))
