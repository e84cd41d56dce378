"""Fault injection for the crash tests: ``TSTRAIN_FAULT`` makes a process kill itself with SIGKILL.

Off unless the environment variable is set; the check is one dictionary lookup. The value is
``POINT:STEP`` or ``POINT:STEP@RANK`` (only that rank of a torchrun job dies), where POINT is

- ``step``: at the end of optimizer step STEP (counted from 1), after its metrics, evaluation and
  checkpoint. ``step:SWITCH`` with SWITCH = round(ratio * steps) dies right after the switch
  checkpoint, so the resumed run starts exactly at the first phase-2 step.
- ``save``: in the middle of writing the checkpoint of step STEP: its data files are on disk, its
  manifest is not and it has not been renamed into place.
- ``prepare``: in ``prepare-data``, when part STEP (counted from 0) is closed: its token files are
  in place under their names, the progress file does not list them yet.
- ``full-save``: the disk fills while the checkpoint of step STEP is written, after its weights
  (``OSError`` ENOSPC is raised instead of a kill; in a torchrun job on the rank named, or on all).
- ``full-model``: the disk fills while a model dir (``final/`` or ``export``'s) is written, after its
  weights; STEP is 0.

SIGKILL runs no ``finally`` and no ``atexit``: what is left on disk is what a power cut or the
OOM killer would leave.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "TSTRAIN_FAULT"
POINTS = ("step", "save", "prepare", "full-save", "full-model")


def parse(spec: str) -> tuple[str, int, int | None]:
    """Return ``(point, step, rank or None)`` of a ``POINT:STEP[@RANK]`` spec."""
    point, _, rest = spec.partition(":")
    step, _, rank = rest.partition("@")
    if point not in POINTS or not step.isdigit() or (rank and not rank.isdigit()):
        raise ValueError(f"{ENV}={spec!r}: expected POINT:STEP or POINT:STEP@RANK with POINT in {POINTS}")
    return point, int(step), int(rank) if rank else None


def named(point: str, step: int, rank: int) -> str | None:
    """Return ``TSTRAIN_FAULT``'s spec if it names this point, step and rank (a spec without a rank names every
    rank); None otherwise, and when it is unset."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    want_point, want_step, want_rank = parse(spec)
    return spec if want_point == point and want_step == step and want_rank in (None, rank) else None


def maybe_die(point: str, step: int, rank: int = 0) -> None:
    """Kill this process with SIGKILL if ``TSTRAIN_FAULT`` names this point, step and rank."""
    if named(point, step, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_fill(point: str, step: int = 0, rank: int = 0) -> None:
    """Raise the ``OSError`` of a full disk if ``TSTRAIN_FAULT`` names this point, step and rank."""
    spec = named(point, step, rank)
    if spec:
        raise OSError(errno.ENOSPC, f"No space left on device ({ENV}={spec})")
