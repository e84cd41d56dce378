"""Activation checkpointing: each decoder layer keeps its input and recomputes the rest in the backward.

Also how a causal LM's decoder layers are found, one by one: the units this recomputes, and the same
list FSDP2 shards (``distributed``) and the trainer compiles block by block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn


def checkpoint_activations(model: nn.Module) -> None:
    """Make each decoder layer keep only its input and recompute the rest in the backward pass.

    Activation memory becomes one layer's worth plus the layers' inputs, for about one more forward
    pass of compute (TorchTitan's "full" activation checkpointing). Done in place on each layer's
    ``forward`` (non-reentrant, so it composes with compile and FSDP2): parameter names and
    checkpoints are unchanged, and so are the numbers (the recomputation is the same arithmetic).
    """
    for layer in decoder_layers(model):
        layer.forward = functools.partial(_recomputed, layer.forward)


def _recomputed(forward: Callable, *args: Any, **kwargs: Any) -> Any:
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Return the decoder layers of a Hugging Face causal LM, in order.

    The classes named in the model's ``_no_split_modules`` (what ``transformers`` itself keeps whole
    when it splits a model across devices) when it has them; otherwise the longest ``ModuleList``.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise TypeError(f"{type(model).__name__} has no decoder layers that FSDP2 could shard one by one")
    return list(max(lists, key=len))
