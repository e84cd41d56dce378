"""Experiments over runs: the shared base, compare, sweep and ablate, scale.

Nothing is imported here, so that a module of the package loads only what it needs."""
