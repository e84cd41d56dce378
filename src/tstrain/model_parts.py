"""The three pieces TST needs from a causal LM: input embedding, transformer body, LM head.

TST touches only the input embedding (bags are averaged there) and the output head (the multi-hot
cross entropy); the body runs unchanged. ``CausalLMParts`` reaches them in any Hugging Face causal
LM without importing ``transformers``; ``CallableParts`` takes them from any other model as an
embedding and two callables. Torch only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn


class _Parts:
    """What both kinds of parts share: an ``embedding`` with a ``weight`` and a ``head``."""

    embedding: nn.Module
    head: nn.Module | Callable[[torch.Tensor], torch.Tensor]

    @property
    def plain_linear_head(self) -> bool:
        """Return whether the head is a bias-free linear map (so it can be fused with the loss)."""
        return type(self.head) is nn.Linear and self.head.bias is None

    @property
    def vocab_size(self) -> int:
        return self.embedding.weight.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)


class CausalLMParts(_Parts):
    """The three pieces TST needs from a causal LM: input embedding, transformer body, LM head.

    For a mixture-of-experts model it also gives the router load-balancing loss the model's own
    ``transformers`` code adds in ordinary training (its ``load_balancing_loss_func`` times
    ``router_aux_loss_coef``), so the trainer adds the same term in both phases.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.embedding = model.get_input_embeddings()
        self.head = model.get_output_embeddings()
        self.body = model.base_model
        if self.embedding is None or self.head is None or self.body is model:
            raise TypeError(f"{type(model).__name__} does not expose an input embedding, "
                            "a base model and an output head")
        # Mixture-of-experts causal LMs in transformers keep these three on the model and define the
        # loss function next to it (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE, ...).
        self.balance_loss = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
        self.aux_coef = float(getattr(model, "router_aux_loss_coef", 0.0) or 0.0)
        self.num_experts = getattr(model, "num_experts", None)
        self.top_k = getattr(model, "num_experts_per_tok", None)

    @property
    def is_moe(self) -> bool:
        return self.balance_loss is not None and bool(self.num_experts) and bool(self.top_k)

    def hidden_states(self, input_ids: torch.Tensor | None = None,
                      inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Return the last hidden states ``(B, L, d)`` for token ids or input embeddings."""
        out = self.body(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def hidden_states_and_aux_loss(
        self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the hidden states ``(B, L, d)`` and the weighted router loss (None for a dense model).

        The router sees whatever the body sees: in phase 1 the bag-averaged positions.
        """
        if not (self.is_moe and self.aux_coef > 0):
            return self.hidden_states(input_ids, inputs_embeds), None
        out = self.body(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False, output_router_logits=True)
        aux = self.balance_loss(out.router_logits, self.num_experts, self.top_k)
        return out.last_hidden_state, self.aux_coef * aux



class CallableParts(_Parts):
    """The same three pieces from a model that is not a Hugging Face causal LM.

    ``embedding`` is the input embedding (an ``nn.Embedding``, or its ``(V, d)`` weight), ``body``
    maps input embeddings ``(B, L, d)`` to last hidden states ``(B, L, d)`` (positions, blocks and
    the final norm; it may return ``(hidden, aux_loss)`` to add a loss of its own), and ``head``
    maps hidden states to logits (an ``nn.Linear`` without bias can be fused with the loss).
    """

    def __init__(self, embedding: nn.Embedding | torch.Tensor, body: Callable[[torch.Tensor], torch.Tensor],
                 head: nn.Module | Callable[[torch.Tensor], torch.Tensor]):
        self.embedding = embedding if isinstance(embedding, nn.Module) else _WeightOnly(embedding)
        self.body = body
        self.head = head

    def hidden_states_and_aux_loss(
        self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the last hidden states ``(B, L, d)`` and the body's own extra loss (None if it has none)."""
        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)
        out = self.body(inputs_embeds)
        return out if isinstance(out, tuple) else (out, None)



class _WeightOnly(nn.Module):
    """An embedding given as its bare ``(V, d)`` weight tensor."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        # Held, not registered as a parameter: it may be a non-leaf view (a sharded weight's local part).
        object.__setattr__(self, "weight", weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)


ModelParts = CausalLMParts | CallableParts


def parts_of(model: nn.Module | ModelParts) -> ModelParts:
    """Return the TST pieces of ``model``: a Hugging Face causal LM, or parts already taken."""
    if isinstance(model, CausalLMParts | CallableParts):
        return model
    return CausalLMParts(model)
