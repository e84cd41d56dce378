"""The model side of TST in TorchTitan: an input embedding that averages bags of ids, and causal attention.

TST changes one thing at the model's input: a position holds a bag of ``s`` consecutive tokens
and sees the mean of their embeddings. ``BagEmbedding`` is TorchTitan's ``Embedding`` that also
takes ``(B, L, s)`` ids and returns the mean of each bag's vectors (``(B, L)`` ids behave as
before), so the transformer body, its parallelisms and its compilation are untouched and phase 2
runs the unchanged model. ``BagEmbeddingConverter`` is the model converter that puts it in place
of a decoder's ``tok_embeddings`` (next to float8 and the other converters of ``model_registry``).

``CausalAttentionConverter`` gives every attention layer plain causal SDPA: a TST window is one
causal sequence over its ``L`` positions (no document masking, as ``tstrain train`` trains), and
SDPA is also the one attention TorchTitan can run backward through on a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention, VarlenAttention
from torchtitan.models.common.embedding import Embedding
from torchtitan.protocols.model import ModelConfigConverter
from torchtitan.protocols.module import Module


class BagEmbedding(Embedding):
    """``Embedding`` that maps ``(B, L, s)`` bags of ids to the mean of their vectors, ``(B, L, d)``.

    The lookup is the parent's (vocab-parallel under tensor parallelism); the mean sums in float32
    and casts back, as ``tstrain.bag_embeddings`` does.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(Embedding.Config):
        pass

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        vectors = super().forward(input)
        if input.dim() != 3:
            return vectors
        return (vectors.float().sum(dim=-2) / input.shape[-1]).to(vectors.dtype)


class BagEmbeddingConverter(ModelConfigConverter):
    """Replaces a model's ``tok_embeddings`` config by a ``BagEmbedding`` config with the same fields."""

    @dataclass(kw_only=True, slots=True)
    class Config(ModelConfigConverter.Config):
        pass

    def __init__(self, config: Config):
        self.config = config

    def convert(self, model_config: Module.Config) -> Module.Config:
        plain = getattr(model_config, "tok_embeddings", None)
        if not isinstance(plain, Embedding.Config):
            raise ValueError(f"{type(model_config).__qualname__} has no tok_embeddings Embedding to average bags in")
        if not isinstance(plain, BagEmbedding.Config):
            values = {f.name: getattr(plain, f.name) for f in dataclasses.fields(plain) if f.init}
            model_config.tok_embeddings = BagEmbedding.Config(**values)
        return model_config


class CausalAttentionConverter(ModelConfigConverter):
    """Replaces every flex or varlen inner attention by causal ``ScaledDotProductAttention``."""

    @dataclass(kw_only=True, slots=True)
    class Config(ModelConfigConverter.Config):
        pass

    def __init__(self, config: Config):
        self.config = config

    def convert(self, model_config: Module.Config) -> Module.Config:
        found = list(model_config.traverse((FlexAttention.Config, VarlenAttention.Config)))
        for _, _, parent, attr in found:
            if isinstance(parent, list):
                parent[attr] = ScaledDotProductAttention.Config()
            else:
                setattr(parent, attr, ScaledDotProductAttention.Config())
        return model_config
