"""Fused head + loss kernels for accelerators; the chunked PyTorch path in ``superposition`` is the reference.

``superposition.linear_multi_hot_cross_entropy`` asks :func:`cuda_linear_mce` for a kernel when its
inputs live on a CUDA device, so neither the trainer nor a user's loop has to choose one. ``auto``
gives the Triton kernel only where it has passed its self-check on that device (``choice.py``);
``TSTRAIN_LOSS_KERNEL=triton|chunked`` forces a path.
"""

from __future__ import annotations

from .choice import CHOOSER, KERNEL_ENV, Choice, KernelChooser

__all__ = ["CHOOSER", "KERNEL_ENV", "Choice", "KernelChooser", "cuda_linear_mce", "loss_path"]


def loss_path(device, reference, refresh: bool = False) -> Choice:
    """Return the path the fused loss takes on ``device`` and why (``reference``: the chunked autograd Function)."""
    return CHOOSER.choose(device, reference, refresh)


def cuda_linear_mce(device, reference):
    """Return the Triton fused head + multi-hot CE (an autograd Function) where chosen on ``device``, else None."""
    return CHOOSER.kernel(device, reference)
