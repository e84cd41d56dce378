"""Every number of an experiment's report as text: a value, a gap, a 95% interval, the data line.
One formatter per kind of figure, so compare, sweep, ablate and scale write them alike."""

from __future__ import annotations

from typing import Any


def data_line(record: dict[str, Any] | None) -> str:
    """Return a report's line naming its data (``data_record``): dir, corpus hash, tokens."""
    if not record:
        return "Data: no manifest found."
    corpus = record["corpus_sha256"] or "not recorded (prepared before it was)"
    return (f"Data: `{record['path']}`, corpus hash {corpus}, {record['train_tokens']:,} training and "
            f"{record['val_tokens']:,} validation tokens.")


def value_text(summary: dict[str, Any]) -> str:
    """Return a ``value_summary`` as table text: "value (lo to hi; reading)", "n/a" (with the reason where it
    is not comparable), or, for TST below the baseline's fitted asymptote, "above any (lo to unbounded; ...)"."""
    if summary["value"] is None and not summary["interval"]:
        return "n/a" if summary["reading"] == "not measured" else f"n/a ({summary['reading']})"
    if summary["value"] is None and summary["interval"][0] is None:
        return f"above any ({summary['reading']})"
    value = "above any" if summary["value"] is None else f"{summary['value']:.2f}"
    return f"{value} ({interval_text(summary['interval'], '.2f')}; {summary['reading']})"


def interval_text(interval: list[float | None] | None, spec: str) -> str:
    """Return a 95% interval as "lo to hi" ("unbounded" for an open end, "n/a" for none)."""
    if not interval:
        return "n/a"
    return " to ".join("unbounded" if x is None else format(x, spec) for x in interval)


