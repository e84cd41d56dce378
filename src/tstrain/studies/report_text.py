"""Every figure of an experiment's report as text: a number, a 95% interval, a value with its interval, a gap, a
phase-1 step value, the noise, the arms' LRs and the data line; and a result as its JSON file holds it. One
formatter per kind of figure, so compare, sweep, ablate, scale and the result readers write them alike."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from .statistics import Z95, GapReading, ValueSummary, comparable


def number(x: float | None, spec: str, missing: str = "n/a", suffix: str = "") -> str:
    """Return ``x`` formatted by ``spec`` (then ``suffix``), or ``missing`` where there is no finite value: every
    figure of a report goes through here, so an absent one reads the same in every table."""
    if x is None or not math.isfinite(x):
        return missing
    return format(x, spec) + suffix


def interval_text(interval: list[float | None] | None, spec: str) -> str:
    """Return a 95% interval as "lo to hi" ("unbounded" for an open end, "n/a" for none)."""
    if not interval:
        return "n/a"
    return " to ".join(number(x, spec, "unbounded") for x in interval)


def estimate_text(value: float | None, interval: list[float | None] | None, spec: str = ".2f") -> str:
    """Return a value with its 95% interval, "value (lo to hi)"; the value alone without an interval, "n/a"
    without a value."""
    if value is None or not interval:
        return number(value, spec)
    return f"{number(value, spec)} ({interval_text(interval, spec)})"


def gap_text(gap: GapReading) -> str:
    """Return a gap reading with its 95% half-width, e.g. "+0.0123 +- 0.0390 (within noise)"."""
    if gap.se is None:
        return f"{gap.gap:+.4f} (noise unknown)"
    return f"{gap.gap:+.4f} +- {Z95 * gap.se:.4f} ({gap.reading})"


def value_text(summary: ValueSummary) -> str:
    """Return a phase-1 step value over seeds as table text: "value (lo to hi; reading)", "n/a" (with the reason
    where it is not comparable), or, for TST below the baseline's fitted asymptote, "above any (lo to unbounded;
    ...)"."""
    if summary.value is None and not summary.interval:
        return "n/a" if summary.reading == "not measured" else f"n/a ({summary.reading})"
    if summary.value is None and summary.interval[0] is None:
        return f"above any ({summary.reading})"
    value = number(summary.value, ".2f", "above any")
    return f"{value} ({interval_text(summary.interval, '.2f')}; {summary.reading})"


def json_text(result: Any) -> str:
    """Return a result as a report's JSON file holds it: its typed readings (``GapReading``, ``StepValue``) as
    their fields."""
    return json.dumps(result, indent=2, default=_fields) + "\n"


def _fields(value: Any) -> dict[str, Any]:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON: give the report a dataclass, a dict or a number")


def data_line(record: dict[str, Any] | None) -> str:
    """Return a report's line naming its data (``data_record``): dir, corpus hash, tokens."""
    if not record:
        return "Data: no manifest found."
    corpus = record["corpus_sha256"] or "not recorded (prepared before it was)"
    return (f"Data: `{record['path']}`, corpus hash {corpus}, {record['train_tokens']:,} training and "
            f"{record['val_tokens']:,} validation tokens.")


def lr_line(lrs: dict[str, float]) -> str:
    """Return the report's sentence on the arms' LRs ("" when they share one)."""
    if comparable(lrs["baseline"], lrs["tst"]):
        return ""
    return f" Each arm at its own LR: the baseline at {lrs['baseline']:g}, TST at {lrs['tst']:g}."


def noise_text(noise: float | None) -> str:
    """Return the evaluation noise behind a table's gaps, as its caption says it."""
    return "unknown: too few evaluations" if noise is None else f"{noise:.4f} nats on one evaluation"
