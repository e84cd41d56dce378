"""What each optimizer step of a TST run trains on, from the TST settings and the step count alone.

``TSTSettings`` are the TST settings of a run (bag size, ratio, weights, variant, transition,
expansion) and every rule that relates them, to each other and to a run's steps, batch and
sequence length: the config, ``Schedule``, the Hugging Face ``Trainer`` integration and the
TorchTitan extension all ask these rules, so a setting is refused in the same words wherever it
is given (only the names differ: ``bag_size`` in Python, ``tst.bag_size`` in a config).

``Schedule`` is the one source of truth for the two phases: the switch step, each step's phase,
its bag sizes and sequence counts (the hard switch, the step-down and the blend), the positions
the transformer sees, the variant, and the tokens each sequence reads. It needs no config, no
files and no torch, so an own training loop, the integrations and tstrain's trainer all ask the
same object. It also gives the run's learning rate (one Warmup-Stable-Decay schedule over all
steps, or one per phase when restarted).

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

import functools
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError, ConfigTypeError
from .options import knob

VARIANTS = ("both", "input", "output")
WEIGHT_SCHEMES = ("uniform", "power", "exponential", "first", "mi")
TRANSITIONS = ("hard", "step-down", "blend")
EXPANSIONS = ("length", "batch")
CHOICES = {"weights": WEIGHT_SCHEMES, "variant": VARIANTS, "transition": TRANSITIONS, "expand": EXPANSIONS}

# Exponent of the paper's mutual-information fit on DCLM, MI(d) ~ C0 + a * d**k.
DCLM_MI_EXPONENT = -1.25

# How the rules name a run's geometry: ``Schedule``'s own fields unless a caller says otherwise.
PLAIN_RUN_NAMES = {"steps": "steps", "batch_size": "batch_size", "seq_len": "seq_len"}


def window_length(seq_len: int, bag_size: int, variant: str | None) -> tuple[int, int]:
    """Return ``(stride, window)``: tokens consumed as inputs, and tokens read per sequence.

    ``variant=None`` means ordinary next-token prediction (phase 2, or the baseline).
    """
    L, s = seq_len, bag_size
    if variant is None or s == 1:
        return L, L + 1
    if variant == "both":
        return L * s, (L + 1) * s
    if variant == "input":
        return L * s, L * s + 1
    if variant == "output":
        return L, L + s
    raise ValueError(f"unknown TST variant {variant!r}; choose one of {VARIANTS}")


def is_integer(value: Any) -> bool:
    """Return whether ``value`` is a whole number of an integer type (``True`` and ``2.0`` are not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Return whether ``value`` is a finite number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def raise_first(rules: list[tuple[bool, str]]) -> None:
    """Raise ``ConfigError`` with the message of the first broken rule of ``(ok, message)`` pairs."""
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)


def geometry_rules(steps: int, batch_size: int, seq_len: int,
                   names: Mapping[str, str] = PLAIN_RUN_NAMES) -> list[tuple[bool, str]]:
    """Return the checks of a run's steps, batch (sequences per step) and sequence length."""
    values = {"steps": steps, "batch_size": batch_size, "seq_len": seq_len}
    return [(is_integer(value) and value >= 1, f"{names[key]} must be an integer >= 1; got {value!r}")
            for key, value in values.items()]


def lr_rules(peak: float, warmup: int, decay_fraction: float, final_lr_fraction: float,
             names: Mapping[str, str] | None = None) -> list[tuple[bool, str]]:
    """Return the checks of a WSD learning rate's settings (so that no step's LR is negative)."""
    n = {"peak": "peak", "warmup": "warmup", "decay_fraction": "decay_fraction",
         "final_lr_fraction": "final_lr_fraction", **(names or {})}
    return [
        (is_real(peak) and peak > 0, f"{n['peak']} must be a positive number; got {peak!r}"),
        (is_integer(warmup) and warmup >= 0, f"{n['warmup']} must be an integer >= 0; got {warmup!r}"),
        (is_real(decay_fraction) and 0.0 <= decay_fraction <= 1.0,
         f"{n['decay_fraction']} must be in [0, 1]; got {decay_fraction!r}"),
        (is_real(final_lr_fraction) and 0.0 <= final_lr_fraction <= 1.0,
         f"{n['final_lr_fraction']} must be in [0, 1]; got {final_lr_fraction!r}"),
    ]


@functools.lru_cache(maxsize=16, typed=True)
def _checked_lr_settings(peak: float, warmup: int, decay_fraction: float, final_lr_fraction: float) -> None:
    raise_first(lr_rules(peak, warmup, decay_fraction, final_lr_fraction))


def _check_lr_settings(peak: float, warmup: int, decay_fraction: float, final_lr_fraction: float) -> None:
    """Refuse LR settings that would give a negative LR, checking each set once (``Schedule.lr`` runs every step;
    a refusal is never cached, and settings that cannot be a cache key are checked directly)."""
    try:
        _checked_lr_settings(peak, warmup, decay_fraction, final_lr_fraction)
    except TypeError:
        raise_first(lr_rules(peak, warmup, decay_fraction, final_lr_fraction))


def wsd_lr(step: int, total: int, lr: float, warmup: int, decay_fraction: float,
           final_lr_fraction: float = 0.0) -> float:
    """Return the Warmup-Stable-Decay learning rate at ``step`` (0-based) of ``total``.

    Linear warmup over ``warmup`` steps (step 0 already trains at ``lr / warmup``), constant, then
    linear decay to ``final_lr_fraction * lr`` over the last ``round(decay_fraction * total)`` steps
    (reached at the final step, and kept past it: the LR is never negative).
    """
    raise_first(lr_rules(lr, warmup, decay_fraction, final_lr_fraction, {"peak": "lr"}))
    return _wsd(step, total, lr, warmup, decay_fraction, final_lr_fraction)


def _wsd(step: int, total: int, lr: float, warmup: int, decay_fraction: float, final_lr_fraction: float) -> float:
    """``wsd_lr`` of settings already checked (``Schedule.lr`` checks them once, under its own names)."""
    if not is_integer(step) or step < 0:
        raise ConfigError(f"step must be an integer >= 0; got {step!r}")
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = round(decay_fraction * total)
    decay_start = total - decay_steps
    if decay_steps == 0 or step < decay_start:
        return lr
    progress = min((step - decay_start + 1) / decay_steps, 1.0)
    return lr * (1.0 - (1.0 - final_lr_fraction) * progress)


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




@dataclass(frozen=True, kw_only=True)
class TSTSettings:
    """The TST settings of a run, checked when made: each field alone here, against a run's steps,
    batch and sequence length in ``run_rules``. ``bag_size`` 1 or ``ratio`` 0 is the baseline."""

    bag_size: int = knob(4, "s: tokens averaged into one position in phase 1 (1 is the baseline)")
    ratio: float = knob(0.3, "r: the fraction of the steps in phase 1 (0 is the baseline)")
    weights: Literal["uniform", "power", "exponential", "first", "mi"] = knob(
        "uniform", "weights of a target bag's tokens in the multi-hot cross entropy")
    mi_exponent: float = knob(DCLM_MI_EXPONENT, "k of the MI(d) = C0 + a*d^k fit, for weights = mi")
    variant: Literal["both", "input", "output"] = knob(
        "both", "bags on both sides, the input side only or the output side only")
    transition: Literal["hard", "step-down", "blend"] = knob(
        "hard", "the switch (the paper), bag size s -> s/2 -> ... within phase 1, or a blended mix of both")
    transition_steps: int = knob(0, "blend: steps over which the bag share falls from 1 to 0, centred on the "
                                    "switch (0: half of phase 1)")
    expand: Literal["length", "batch"] = knob(
        "length", "phase 1 reads s x the text as longer windows (length) or s x the windows of L/s bags (batch)")

    def __post_init__(self):
        for kind, message in self.problems():
            raise kind(message)

    @classmethod
    def name_of(cls, setting_name: str) -> str:
        """Return how a message names a setting (a config section says ``tst.bag_size``)."""
        return setting_name

    def settings(self) -> TSTSettings:
        """Return these settings alone (without what a subclass adds)."""
        return TSTSettings(**self._own_values())

    def _own_values(self) -> dict[str, Any]:
        """Return the TST settings' fields of this object by name (a subclass's own fields left out)."""
        return {name: getattr(self, name) for name in TSTSettings.__dataclass_fields__}

    def problems(self) -> list[tuple[type[ConfigError], str]]:
        """Return ``(error class, message)`` for each setting that cannot work, in the order of the fields."""
        return [problem for name in TSTSettings.__dataclass_fields__ for problem in self.setting_problems(name)]

    def setting_problems(self, name: str) -> list[tuple[type[ConfigError], str]]:
        """Return what is wrong with one setting alone: its type, then its value."""
        value, n = getattr(self, name), self.name_of(name)
        if name in CHOICES:
            ok = isinstance(value, str) and value in CHOICES[name]
            return [] if ok else [(ConfigError, f"{n} must be one of {', '.join(CHOICES[name])}; got {value!r}")]
        if name in ("bag_size", "transition_steps") and not is_integer(value):
            return [(ConfigTypeError, f"{n} must be an integer; got {value!r}")]
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool)):
            return [(ConfigTypeError, f"{n} must be a number; got {value!r}")]
        if not math.isfinite(value):
            return [(ConfigError, f"{n} must be a finite number; got {value!r}")]
        ranges = {"bag_size": (value >= 1, f"{n} must be an integer >= 1 (1 is the baseline); got {value}"),
                  "ratio": (0.0 <= value < 1.0, f"{n} must be in [0, 1): phase 2 needs at least one step; got {value}"),
                  "transition_steps": (value >= 0, f"{n} must be >= 0; got {value}")}
        ok, message = ranges.get(name, (True, ""))
        return [] if ok else [(ConfigError, message)]

    # -- what follows from the steps ---------------------------------------------------------------

    def switch_step_of(self, steps: int) -> int:
        """Return the first phase-2 step of a run of ``steps``: ``round(ratio * steps)``, or 0 for the baseline."""
        return 0 if self.bag_size == 1 else round(self.ratio * steps)

    def blend_window_of(self, steps: int) -> tuple[int, int]:
        """Return the blend's ``[first, end)`` steps: ``transition_steps`` (default: half of phase 1)
        centred on the switch."""
        S = self.switch_step_of(steps)
        width = self.transition_steps or max(2, S // 2)
        return S - width // 2, S - width // 2 + width

    def step_down_sizes(self) -> list[int]:
        """Return the bag sizes a step-down phase 1 goes through: ``s`` halved while it stays a whole
        number above 1 (``s, s/2, ...``)."""
        sizes = [self.bag_size]
        while sizes[-1] % 2 == 0 and sizes[-1] // 2 > 1:
            sizes.append(sizes[-1] // 2)
        return sizes

    def run_rules(self, steps: int, batch_size: int, seq_len: int,
                  names: Mapping[str, str] = PLAIN_RUN_NAMES) -> list[tuple[bool, str]]:
        """Return the checks that relate these settings to a run of ``steps`` steps of ``batch_size``
        sequences of ``seq_len`` positions; ``names`` says how the caller names those three."""
        geometry = geometry_rules(steps, batch_size, seq_len, names)
        if not all(ok for ok, _ in geometry):
            return geometry
        n, S = self.name_of, self.switch_step_of(steps)
        return geometry + [
            (self.expand == "length" or (self.variant != "output" and seq_len % self.bag_size == 0),
             f"{n('expand')}=batch needs bag inputs ({n('variant')} both or input) and {names['seq_len']} "
             f"({seq_len}) divisible by {n('bag_size')} ({self.bag_size}): phase 1 then sees seq_len / bag_size "
             "positions per sequence"),
            (not (self.bag_size > 1 and 0 < self.ratio and S == 0),
             f"{n('ratio')}={self.ratio} of {steps} steps rounds to no phase-1 step; raise the ratio or "
             f"{names['steps']}, or set {n('ratio')}=0 for the baseline"),
            (S < steps,
             f"{n('ratio')}={self.ratio} of {steps} steps switches at step {S} and leaves no phase-2 step: the model "
             f"would never train on next-token prediction; lower the ratio or raise {names['steps']}"),
        ] + self.transition_rules(steps, names)

    def transition_rules(self, steps: int, names: Mapping[str, str]) -> list[tuple[bool, str]]:
        """Return the checks of a step-down or blended transition (none for the hard switch or the baseline)."""
        n, S = self.name_of, self.switch_step_of(steps)
        if self.transition == "hard" or S == 0:
            return []
        if self.expand != "length":
            return [(False, f"{n('transition')}={self.transition} works with {n('expand')}=length only; use the "
                            "hard switch with batch expansion")]
        if self.transition == "step-down":
            stages = len(self.step_down_sizes())
            return [(stages > 1, f"{n('transition')}=step-down halves the bag size within phase 1 (4 -> 2 -> 1) "
                                 f"and needs an even {n('bag_size')} above 2; got {self.bag_size}. "
                                 "Use transition=blend or hard"),
                    (S >= stages, f"{n('transition')}=step-down needs at least one phase-1 step per bag size "
                                  f"({stages}); phase 1 has {S}. Raise {n('ratio')} or {names['steps']}")]
        first, end = self.blend_window_of(steps)
        return [(end - first >= 2 and first >= 0 and end <= steps,
                 f"{n('transition')}=blend needs {n('transition_steps')} between 2 and "
                 f"{min(2 * S, 2 * (steps - S))}: the blend window is centred on the switch (step {S} of {steps}) "
                 f"and must fit inside the run; got {end - first}")]

    def schedule(self, steps: int, batch_size: int, seq_len: int) -> Schedule:
        """Return the schedule of a run of ``steps`` steps of ``batch_size`` sequences of ``seq_len`` positions."""
        return Schedule(steps=steps, batch_size=batch_size, seq_len=seq_len, **self._own_values())  # checked when made


@dataclass(frozen=True)
class Schedule(TSTSettings):
    """The per-step plan of a TST run of ``steps`` optimizer steps of ``batch_size`` sequences of
    ``seq_len`` positions, under the TST settings given by keyword (``TSTSettings``). Settings that
    cannot train as asked are refused when it is made, before any step.

    ``expand="batch"`` trains phase 1 on ``B*s`` sequences of ``L/s`` positions instead of ``B``
    of ``L`` (same positions and data tokens per step, shorter attention context). Steps run from 0
    to ``steps - 1``; asking for a step outside them is refused.
    """

    steps: int
    batch_size: int
    seq_len: int

    def __post_init__(self):
        super().__post_init__()
        raise_first(self.run_rules(self.steps, self.batch_size, self.seq_len))

    def check_step(self, step: int) -> int:
        """Return ``step`` if it is one of the run's steps, else raise a ValueError naming the range."""
        if not is_integer(step) or not 0 <= step < self.steps:
            raise ConfigError(f"step {step!r} is outside the schedule's steps 0..{self.steps - 1}")
        return int(step)

    # -- the switch and the transitions ----------------------------------------------------------

    @property
    def switch_step(self) -> int:
        """Return the first phase-2 step: ``round(ratio * steps)``, or 0 for the baseline."""
        return self.switch_step_of(self.steps)

    def blend_window(self) -> tuple[int, int]:
        """Return the blend's ``[first, end)`` steps: ``transition_steps`` steps centred on the switch."""
        return self.blend_window_of(self.steps)

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

    def data_tokens(self, steps: int | None = None) -> int:
        """Return the data tokens the first ``steps`` steps (the whole run if None) consume as inputs: one
        step's figure per stretch between two changes of the batch, so a long run costs no more than a short one."""
        end = self.steps if steps is None else steps
        bounds = [0, *(c for c in self.changes() if 0 < c < end), end]
        return sum((b - a) * self.tokens_read(a) for a, b in zip(bounds, bounds[1:]) if b > a)

    def positions_trained(self, step: int) -> int:
        """Return the positions the transformer sees in ``step`` (the same in both phases: equal FLOPs)."""
        return sum(g.count * g.positions for g in self.plan(step))

    # -- the learning rate ---------------------------------------------------------------------

    def lr(self, step: int, peak: float, warmup: int, decay_fraction: float, final_lr_fraction: float = 0.0,
           restart: bool = False) -> float:
        """Return the LR of ``step``: one WSD schedule over the run, or (``restart``) one per phase.

        Past the last step the LR stays at its final value; it is never negative.
        """
        _check_lr_settings(peak, warmup, decay_fraction, final_lr_fraction)
        n, S = self.steps, self.switch_step
        if restart and S > 0:
            if step < S:
                return _wsd(step, S, peak, min(warmup, S), decay_fraction, final_lr_fraction)
            return _wsd(step - S, n - S, peak, min(warmup, n - S), decay_fraction, final_lr_fraction)
        return _wsd(step, n, peak, warmup, decay_fraction, final_lr_fraction)
