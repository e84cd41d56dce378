"""Experiments over runs: runs, statistics and report text under compare, sweep and ablate, scale.

Nothing is imported here, so that a module of the package loads only what it needs."""
