"""The trainer: the loop, its optimizer settings, run dirs, checkpoints, processes, metrics.

Nothing is imported here, so that a module of the package loads only what it needs."""
