"""What each experiment verb runs, as data: a comparison's settings (``CompareOptions``), the scale study's grid
(``ScaleOptions``), the sweep's (``SweepOptions``), the named
ablations (``ABLATIONS``) and the equal-loss ladder's default lengths (``LADDER``). Nothing here trains, so
the command line builds its flags and help from these without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import preset_names
from ..errors import ConfigError
from ..options import as_text, knob
from ..schedule import TSTSettings


def _listed(kind: type):
    """Return the parser of a comma-separated list of ``kind`` values."""
    return lambda text: tuple(kind(x) for x in text.split(","))


def _pairs(text: str) -> tuple[tuple[int, float], ...]:
    return tuple((int(s), float(r)) for s, r in (item.split(":") for item in text.split(",")))


def settings_rules(pairs, name: str) -> list[tuple[bool, str]]:
    """Return the TST settings' own checks (``TSTSettings``) of each ``(bag_size, ratio)`` pair, each message
    led by ``name`` filled with the pair (``"--arms {s}:{r}"``)."""
    rules = []
    for s, r in pairs:
        try:
            TSTSettings(bag_size=s, ratio=r)
        except ConfigError as e:
            rules.append((False, f"{name.format(s=s, r=r)}: {e}"))
    return rules


@dataclass(frozen=True)
class ScaleOptions:
    """The grid of a scale study: model sizes x run lengths x seeds, each TST arm against its baseline."""

    sizes: tuple[str, ...] = knob(("cpu-micro", "cpu-mini"), "presets, one per model size", parse=_listed(str),
                                  takes="comma-separated preset names")
    steps: tuple[int, ...] = knob((600, 2000, 6000), "run lengths", parse=_listed(int),
                                  takes="comma-separated whole numbers")
    arms: tuple[tuple[int, float], ...] = knob(((4, 0.3),), "TST settings (bag size, ratio), each against the baseline",
                                               parse=_pairs, takes="S:R pairs, e.g. 4:0.3,2:0.2")
    seeds: tuple[int, ...] = knob((0, 1), "seeds (past the first, only cells that one seed does not settle run)",
                                  parse=_listed(int), takes="comma-separated whole numbers")
    repeat_within: float = knob(0.0, "repeat a cell on every seed when its first seed's gap is within the noise of "
                                     "a final value, measured in the decays, or within this many nats")
    lrs: tuple[float, ...] = knob((), "LRs to try on each size's baseline first, keeping the best (none: the preset's)",
                                  parse=_listed(float), takes="comma-separated numbers")
    tune_steps: int = knob(2000, "steps of the LR-tuning baseline runs")
    tune_arms: bool = knob(False, "tune each TST arm's LR over --lrs too (same steps, same grid) and train it at "
                                  "its own best, against the baseline at the baseline's best")

    def rules(self) -> list[tuple[bool, str]]:
        unknown = [s for s in self.sizes if s not in preset_names()]
        return [
            (len(self.sizes) > 0 and not unknown,
             f"--sizes takes preset names; unknown: {', '.join(unknown)} (presets: {', '.join(preset_names())})"),
            (len(self.steps) > 0 and all(n >= 1 for n in self.steps),
             f"--steps values must be at least 1; got {as_text(self.steps)!r}"),
            (len(self.arms) > 0, "--arms takes S:R pairs, e.g. 4:0.3"),
            *settings_rules(self.arms, "--arms {s}:{r}"),
            (len(self.seeds) > 0 and all(0 <= s < 2**32 for s in self.seeds),
             f"--seeds values must be in [0, 2^32); got {as_text(self.seeds)!r}"),
            (all(math.isfinite(lr) and lr > 0 for lr in self.lrs),
             f"--lrs values must be finite and positive; got {as_text(self.lrs)!r}"),
            (self.lrs or not self.tune_arms, "--tune-arms tunes over --lrs: give the LRs, e.g. --lrs 1e-3,2e-3,4e-3"),
            (math.isfinite(self.repeat_within) and self.repeat_within >= 0 and self.tune_steps >= 1,
             f"--repeat-within must be >= 0 and --tune-steps >= 1; got {self.repeat_within}, {self.tune_steps}"),
        ]


@dataclass(frozen=True)
class SweepOptions:
    """The s x r grid of a sweep: every bag size with every ratio, each cell against the one baseline."""

    bag_sizes: tuple[int, ...] = knob((2, 4, 8), "the bag sizes s of the grid", parse=_listed(int),
                                      takes="comma-separated whole numbers")
    ratios: tuple[float, ...] = knob((0.2, 0.3, 0.4), "the ratios r of the grid", parse=_listed(float),
                                     takes="comma-separated numbers")

    def rules(self) -> list[tuple[bool, str]]:
        """Return the checks of the grid: each cell by the TST settings' own rules, named by its flags."""
        cells = [(s, r) for s in self.bag_sizes for r in self.ratios]
        return [(len(cells) > 0, "--bag-sizes and --ratios each need a value"),
                *settings_rules(cells, "--bag-sizes {s} with --ratios {r}")]


# The equal-loss ladder's default lengths, as multiples of the compared runs' steps (``compare --ladder``).
LADDER = (1.25, 1.5, 2.0, 3.0)


def parse_ladder(text: str) -> tuple[float, ...]:
    """Return ``--ladder``'s multiples from their comma-separated text."""
    return _listed(float)(text)


def baseline_lr_rule(lr: float | None) -> tuple[bool, str]:
    """Return the check of a baseline LR (None: the baseline trains at TST's LR), in ``rules()``' form, so that
    compare, sweep and ablate refuse one that no run could train at with one message."""
    ok = lr is None or (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0)
    return ok, (f"--baseline-lr must be a finite number above 0; got {lr!r}: give the baseline's peak learning rate "
                "(e.g. --baseline-lr 4e-3), or leave it out to train both arms at --lr")


@dataclass(frozen=True)
class CompareOptions:
    """What a comparison trains besides baseline and TST at equal FLOPs, and the command its report names."""

    equal_data: bool = knob(False, "also train a baseline that reads as many tokens as TST")
    baseline_lr: float | None = knob(None, "the LR of the baseline (and the equal-data one and the ladder); TST "
                                           "trains at optim.lr; None: both at optim.lr")
    ladder: tuple[float, ...] | None = knob(None, "multiples of the steps at which the baseline is trained too, for "
                                                  "the equal-loss speedup (LADDER is the usual); None: no ladder")
    command: str = knob("tstrain compare", "the command line report.md names")

    def rules(self) -> list[tuple[bool, str]]:
        return [baseline_lr_rule(self.baseline_lr)]


# Named ablations: each is a set of config overrides on top of the method at (s, r).
ABLATIONS: dict[str, dict[str, Any]] = {
    "method": {},
    "input-only": {"tst.variant": "input"},
    "output-only": {"tst.variant": "output"},
    "reset-optimizer": {"tst.reset_optimizer": True},
    "restart-schedule": {"tst.restart_schedule": True},
    "reinit-embeddings": {"tst.reinit_embeddings": True},
    "batch-expansion": {"tst.expand": "batch"},
    "weights-power": {"tst.weights": "power"},
    "weights-exponential": {"tst.weights": "exponential"},
    "weights-first": {"tst.weights": "first"},
    "weights-mi": {"tst.weights": "mi"},
    "step-down": {"tst.transition": "step-down"},
    "blend": {"tst.transition": "blend"},
}
