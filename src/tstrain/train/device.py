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


def named_device(name: str) -> str:
    """Return ``name`` (``--device`` of ``generate``, ``eval``, ``lm-eval``) if this machine has it: ``cpu`` or
    ``cuda[:N]`` with that GPU present; anything else raises one ``ConfigError`` naming it."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r} is not a device tstrain runs on; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this torch sees no CUDA device (a CPU-only build, or no GPU); "
                          "use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return name


def autocast_for(cfg: Config, device: torch.device):
    """Return a context factory: bf16 autocast on CUDA (or when asked), else nothing."""
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
