"""Where a run computes: the device the config asks for, and the precision the trainer runs the model in."""

from __future__ import annotations

import contextlib

import torch

from ..config import Config
from ..errors import ConfigError


def resolve_device(cfg: Config) -> torch.device:
    """Return the config's device: ``auto`` is CUDA when there is one, else the CPU."""
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available; use --set train.device=cpu")
    return torch.device(cfg.train.device)


def autocast_for(cfg: Config, device: torch.device):
    """Return a context factory: bf16 autocast on CUDA (or when asked), else nothing."""
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
