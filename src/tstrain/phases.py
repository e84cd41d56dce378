"""The reader's layout of a configured run: its ``Schedule`` (``cfg.schedule``) as stream regions.

What each step trains on (the switch, the step-down, the blend) is derived in one place,
``tstrain.schedule.Schedule``; this module only joins a ``Config`` to the reader.
"""

from __future__ import annotations

from .config import Config
from .reader import WindowSchedule


def window_schedule(cfg: Config) -> WindowSchedule:
    """Return the per-step window geometry of the run."""
    return WindowSchedule.for_run(cfg.schedule)
