"""What each optimizer step of a TST run trains on, from the TST settings and the step count alone.

``Schedule`` is the one source of truth for the two phases: the switch step, each step's phase,
its bag sizes and sequence counts (the hard switch, the step-down and the blend), the positions
the transformer sees, the variant, and the tokens each sequence reads. It needs no config and no
files, so an own training loop, the Hugging Face ``Trainer`` integration and tstrain's trainer all
ask the same object. It also gives the run's learning rate (one Warmup-Stable-Decay schedule over
all steps, or one per phase when restarted).

Transitions (``S = round(ratio * steps)``, the switch):

- ``hard`` (the paper): bags of ``s`` for steps ``[0, S)``, next-token from ``S`` on.
- ``step-down``: phase 1's ``S`` steps split evenly over bag sizes ``s, s/2, s/4, ...`` down to
  the last one above 1 (4 -> 2 -> 1, 8 -> 4 -> 2 -> 1).
- ``blend``: over ``transition_steps`` steps (default ``S/2``) centred on ``S``, the share of each
  batch's sequences that are bags of ``s`` falls linearly from 1 to 0; the loss is the mean over
  sequences, so the bag loss's weight falls with it while the next-token loss's rises.

Both keep the hard switch's number of bag-sequence steps (exactly for step-down; for blend exactly
when the window and the batch are even, else to rounding) and ``B*L`` positions per step, so they
compare at equal FLOPs. Everything here is a pure function of the step, so resumption is exact
anywhere in a transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .superposition import VARIANTS, window_length

TRANSITIONS = ("hard", "step-down", "blend")
EXPANSIONS = ("length", "batch")


@dataclass(frozen=True)
class SequenceGroup:
    """``count`` sequences of one kind in a step's batch.

    ``bag_size`` 1 is next-token prediction (``variant`` None); otherwise each of the
    ``positions`` positions holds a bag of ``bag_size`` tokens under ``variant``. Each sequence
    consumes ``stride`` tokens as inputs and reads ``window`` tokens (inputs plus targets).
    """

    bag_size: int
    count: int
    positions: int
    variant: str | None
    stride: int
    window: int

    @property
    def kind(self) -> tuple[int, int, int]:
        """Return what makes two groups read alike: ``(bag_size, stride, window)``."""
        return self.bag_size, self.stride, self.window

    @property
    def tokens_read(self) -> int:
        """Return the data tokens the group consumes as inputs."""
        return self.count * self.stride


StepPlan = tuple[SequenceGroup, ...]


def wsd_lr(step: int, total: int, lr: float, warmup: int, decay_fraction: float, final_fraction: float = 0.0) -> float:
    """Return the Warmup-Stable-Decay learning rate at ``step`` (0-based) of ``total``.

    Linear warmup over ``warmup`` steps (step 0 already trains at ``lr / warmup``), constant, then
    linear decay to ``final_fraction * lr`` over the last ``round(decay_fraction * total)`` steps
    (reached at the final step).
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = round(decay_fraction * total)
    decay_start = total - decay_steps
    if decay_steps == 0 or step < decay_start:
        return lr
    progress = (step - decay_start + 1) / decay_steps
    return lr * (1.0 - (1.0 - final_fraction) * progress)


@dataclass(frozen=True)
class Schedule:
    """The per-step plan of a TST run of ``steps`` optimizer steps of ``batch_size`` sequences of
    ``seq_len`` positions. ``bag_size`` 1 or ``ratio`` 0 is the baseline (next-token throughout).

    ``expand="batch"`` trains phase 1 on ``B*s`` sequences of ``L/s`` positions instead of ``B``
    of ``L`` (same positions and data tokens per step, shorter attention context).
    """

    steps: int
    batch_size: int
    seq_len: int
    bag_size: int = 4
    ratio: float = 0.3
    variant: Literal["both", "input", "output"] = "both"
    transition: Literal["hard", "step-down", "blend"] = "hard"
    transition_steps: int = 0
    expand: Literal["length", "batch"] = "length"

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError(problems[0])

    def problems(self) -> list[str]:
        """Return what makes these settings unusable, each saying how to fix it (empty when fine)."""
        checks = [
            (self.steps >= 1 and self.batch_size >= 1 and self.seq_len >= 1,
             f"steps, batch_size and seq_len must be >= 1; got {self.steps}, {self.batch_size}, {self.seq_len}"),
            (self.bag_size >= 1, f"bag_size must be an integer >= 1 (1 is the baseline); got {self.bag_size}"),
            (0.0 <= self.ratio < 1.0, f"ratio must be in [0, 1): phase 2 needs at least one step; got {self.ratio}"),
            (self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}"),
            (self.transition in TRANSITIONS,
             f"transition must be one of {', '.join(TRANSITIONS)}; got {self.transition!r}"),
            (self.expand in EXPANSIONS, f"expand must be one of {', '.join(EXPANSIONS)}; got {self.expand!r}"),
            (self.transition_steps >= 0, f"transition_steps must be >= 0; got {self.transition_steps}"),
        ]
        return [message for ok, message in checks if not ok]

    # -- the switch and the transitions ----------------------------------------------------------

    @property
    def switch_step(self) -> int:
        """Return the first phase-2 step: ``round(ratio * steps)``, or 0 for the baseline."""
        return 0 if self.bag_size == 1 else round(self.ratio * self.steps)

    @property
    def blend_steps(self) -> int:
        """Return the width of a blended transition: ``transition_steps``, or half of phase 1 when 0."""
        return self.transition_steps or max(2, self.switch_step // 2)

    def blend_window(self) -> tuple[int, int]:
        """Return the blend's ``[first, end)`` steps: ``blend_steps`` steps centred on the switch."""
        first = self.switch_step - self.blend_steps // 2
        return first, first + self.blend_steps

    def step_down_sizes(self) -> list[int]:
        """Return the bag sizes a step-down phase 1 goes through: ``s`` halved while it stays a whole
        number above 1 (``s, s/2, ...``)."""
        sizes = [self.bag_size]
        while sizes[-1] % 2 == 0 and sizes[-1] // 2 > 1:
            sizes.append(sizes[-1] // 2)
        return sizes

    def phase(self, step: int) -> int:
        """Return the phase step ``step`` (0-based) trains in: 1 before the switch, else 2 (the baseline: 2)."""
        return 1 if step < self.switch_step else 2

    def phase_after(self, done: int) -> int:
        """Return the phase of the last of ``done`` completed steps (a run at step 0 is in its first phase)."""
        return self.phase(max(done - 1, 0))

    def is_switch(self, step: int) -> bool:
        """Return whether ``step`` is the switch: the first phase-2 step of a run that has a phase 1."""
        return step == self.switch_step > 0

    def bag_share(self, step: int) -> float:
        """Return the share of ``step``'s sequences that are bags (1 in phase 1, 0 in phase 2)."""
        S = self.switch_step
        if self.transition != "blend" or S == 0:
            return 1.0 if step < S else 0.0
        first, end = self.blend_window()
        if step < first:
            return 1.0
        if step >= end:
            return 0.0
        return 1.0 - (step - first + 0.5) / (end - first)

    # -- what a step reads ---------------------------------------------------------------------

    def positions(self, bag_size: int) -> int:
        """Return the positions per sequence of a group of ``bag_size`` (L, or L/s under batch expansion)."""
        if bag_size > 1 and self.expand == "batch":
            return self.seq_len // bag_size
        return self.seq_len

    def mix(self, step: int) -> tuple[tuple[int, int], ...]:
        """Return ``((bag_size, sequences), ...)`` of ``step``'s batch; bag size 1 is next-token."""
        B, S, s = self.batch_size, self.switch_step, self.bag_size
        if self.transition == "blend" and S > 0:
            bags = round(B * self.bag_share(step))
            return tuple((size, n) for size, n in ((s, bags), (1, B - bags)) if n > 0)
        if step >= S:
            return ((1, B),)
        if self.transition == "step-down":
            sizes = self.step_down_sizes()
            stage = min(step * len(sizes) // S, len(sizes) - 1)
            return ((sizes[stage], B),)
        return ((s, B * s if self.expand == "batch" else B),)

    def group(self, bag_size: int, count: int) -> SequenceGroup:
        """Return the group of ``count`` sequences of ``bag_size`` this run trains on."""
        n = self.positions(bag_size)
        variant = self.variant if bag_size > 1 else None
        stride, window = window_length(n, bag_size, variant)
        return SequenceGroup(bag_size, count, n, variant, stride, window)

    def plan(self, step: int) -> StepPlan:
        """Return the sequence groups ``step`` trains on, in batch order."""
        return tuple(self.group(size, count) for size, count in self.mix(step))

    def changes(self) -> list[int]:
        """Return the steps whose batch differs from the step before: the switch, the step-down's
        stages, the blend's steps where the mix changes."""
        S = self.switch_step
        if S == 0:
            return []
        if self.transition == "blend":
            first, end = self.blend_window()
            return [t for t in range(first, end + 1) if self.mix(t) != self.mix(t - 1)]
        if self.transition == "step-down":
            m = len(self.step_down_sizes())
            return [-(-i * S // m) for i in range(1, m)] + [S]
        return [S]

    def sequences(self, step: int) -> int:
        """Return the sequences in the whole batch of ``step``."""
        return sum(n for _, n in self.mix(step))

    def tokens_read(self, step: int) -> int:
        """Return the data tokens ``step`` consumes as inputs (``s`` times a baseline step's in phase 1)."""
        return sum(g.tokens_read for g in self.plan(step))

    def positions_trained(self, step: int) -> int:
        """Return the positions the transformer sees in ``step`` (the same in both phases: equal FLOPs)."""
        return sum(g.count * g.positions for g in self.plan(step))

    # -- the learning rate ---------------------------------------------------------------------

    def lr(self, step: int, peak: float, warmup: int, decay_fraction: float, final_fraction: float = 0.0,
           restart: bool = False) -> float:
        """Return the LR of ``step``: one WSD schedule over the run, or (``restart``) one per phase."""
        n, S = self.steps, self.switch_step
        if restart and S > 0:
            if step < S:
                return wsd_lr(step, S, peak, min(warmup, S), decay_fraction, final_fraction)
            return wsd_lr(step - S, n - S, peak, min(warmup, n - S), decay_fraction, final_fraction)
        return wsd_lr(step, n, peak, warmup, decay_fraction, final_fraction)
