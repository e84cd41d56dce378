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

from .errors import ConfigTypeError


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
        found = [getattr(model, name, None) for name in ("get_input_embeddings", "get_output_embeddings")]
        self.embedding, self.head = (get() if callable(get) else None for get in found)
        self.body = getattr(model, "base_model", model)
        if self.embedding is None or self.head is None or self.body is model:
            raise ConfigTypeError(f"{type(model).__name__} is not a Hugging Face causal LM (no input embedding, "
                                  "base model and output head found): give its parts instead, "
                                  "TSTLoss(embedding=..., body=..., head=...)")
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise ConfigTypeError(f"{type(model).__name__} is an encoder-decoder model; TST trains causal decoders "
                                  "(a ...ForCausalLM), whose position t sees only the tokens up to t")
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
        return body_output(self.body(inputs_embeds), inputs_embeds.shape)



def body_output(out, input_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(hidden, aux_loss)`` of what a body returned, refusing anything but hidden states
    ``(B, L, d)`` or a pair ``(hidden, aux_loss)`` with a scalar ``aux_loss``."""
    hidden, aux = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
    pair_ok = not isinstance(out, tuple) or (isinstance(aux, torch.Tensor) and aux.dim() == 0)
    hidden_ok = isinstance(hidden, torch.Tensor) and hidden.dim() == 3 and hidden.shape[:2] == input_shape[:2]
    if not (pair_ok and hidden_ok):
        raise ConfigTypeError(f"the body returned {describe(out)} for inputs {tuple(input_shape)}; a body returns "
                              "hidden states (B, L, d), or (hidden, aux_loss) with a scalar aux_loss. A torch RNN "
                              "returns (output, h_n): wrap it as body=lambda x: rnn(x)[0]")
    return hidden, aux


def causal_problem(parts: _Parts, embeds: torch.Tensor) -> str | None:
    """Return why the body is not a causal decoder (None when it is): a position's hidden state changes
    when only later positions' inputs change, so a next-token loss would see the future.

    ``embeds`` ``(B, L, d)`` are a real batch's inputs; its first sequence runs twice, the second half
    of its positions changed the second time. No gradient; the global RNG (and so dropout's masks) is
    the same for both runs and left as it was.
    """
    x = embeds[:1].detach()
    half = x.shape[1] // 2
    if half == 0:
        return None
    changed = x.clone()
    changed[:, half:] = 0.5 - x[:, half:]
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        before = parts.hidden_states_and_aux_loss(inputs_embeds=x)[0][:, :half].float()
        torch.manual_seed(0)
        after = parts.hidden_states_and_aux_loss(inputs_embeds=changed)[0][:, :half].float()
    if (before - after).abs().max() <= 1e-3 * before.abs().max().clamp_min(1e-6):
        return None
    return (f"the model is not causal: its hidden states at positions 0..{half - 1} change when only later tokens "
            "change, so the next-token loss would see the future. TST trains causal decoders (a ...ForCausalLM, "
            "or a body that attends to earlier positions only); a BERT-like config needs is_decoder=true")


def describe(value) -> str:
    """Return a value's kind and shapes in a few words (for a message)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of ({', '.join(describe(v) for v in value)})"
    return f"a {type(value).__name__}"


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
