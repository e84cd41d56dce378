"""Fused head + loss kernels for accelerators; the chunked PyTorch path in ``superposition`` is the reference.

``superposition.linear_multi_hot_cross_entropy`` asks :func:`cuda_linear_mce` for a kernel when its
inputs live on a CUDA device, so neither the trainer nor a user's loop has to choose one.
"""

from __future__ import annotations

import functools
import os

# ``TSTRAIN_LOSS_KERNEL=chunked`` keeps the PyTorch path on CUDA too (a comparison, or a GPU Triton cannot serve).
KERNEL_ENV = "TSTRAIN_LOSS_KERNEL"


def cuda_linear_mce():
    """Return the Triton fused head + multi-hot CE (an autograd Function), or None where it cannot run here."""
    if os.environ.get(KERNEL_ENV, "auto") == "chunked":
        return None
    return _triton_function()


@functools.cache
def _triton_function():
    try:
        from .triton_mce import TritonLinearMultiHotCE
    except ImportError:  # no triton: the chunked PyTorch path serves
        return None
    return TritonLinearMultiHotCE
