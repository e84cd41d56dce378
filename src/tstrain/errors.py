"""The errors tstrain raises for a problem a person can fix: each message names it and the fix.

The command line catches ``TstrainError`` once and prints its message as one line (exit code 2);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TstrainError(Exception):
    """A problem with the user's input, data, files or run; the message says how to fix it."""


class ConfigError(TstrainError, ValueError):
    """A configuration value is wrong; the message says which and how to fix it."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting has the wrong type (a fractional bag size, a ratio given as text)."""


class DataError(TstrainError, ValueError):
    """The data cannot serve the run; the message names the problem and the fix."""


class CheckpointError(TstrainError, RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


class TrainingError(TstrainError, RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the last good checkpoint is kept."""


class CorpusError(TstrainError, RuntimeError):
    """The default corpus cannot be installed or read."""


class BusyError(TstrainError, RuntimeError):
    """Another process holds the output dir (``run_lock``); the message names it."""


class WriteError(TstrainError, RuntimeError):
    """A file tstrain writes cannot be written: a full disk, a link at its name, no permission. The message
    names the path; what was written before it is kept."""


class RecordError(TstrainError, ValueError):
    """A file tstrain wrote and reads back (a manifest, ``metrics.jsonl``, ``summary.json``) is malformed; the
    message names the file, the field and the fix."""
