"""Building Hugging Face causal LMs from our config, and reaching their embedding, body and head.

TST touches only the input embedding and the output head, so any ``transformers`` causal LM
whose ``get_input_embeddings()``, ``base_model`` and ``get_output_embeddings()`` are reachable can
be trained; nothing inside the model is modified.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


def padded_vocab(vocab_size: int, multiple: int) -> int:
    """Return ``vocab_size`` rounded up to a multiple (matmul-friendly head shapes)."""
    multiple = max(1, multiple)
    return -(-vocab_size // multiple) * multiple


def hf_config(cfg: ModelConfig, vocab_size: int, seq_len: int):
    """Return the ``transformers`` config object for ``cfg`` (no hub access)."""
    from transformers import LlamaConfig

    if cfg.family != "llama":
        raise ValueError(f"unsupported model family {cfg.family!r}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings or seq_len,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=False,
    )


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int) -> nn.Module:
    """Return a freshly initialised causal LM (float32 weights), seeded by the caller's RNG."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(hf_config(cfg, vocab_size, seq_len), attn_implementation="sdpa")


class CausalLMParts:
    """The three pieces TST needs from a causal LM: input embedding, transformer body, LM head."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.embedding = model.get_input_embeddings()
        self.head = model.get_output_embeddings()
        self.body = model.base_model
        if self.embedding is None or self.head is None or self.body is model:
            raise TypeError(f"{type(model).__name__} does not expose an input embedding, a base model and an output head")

    @property
    def plain_linear_head(self) -> bool:
        """Return whether the head is a bias-free linear map (so it can be fused with the loss)."""
        return type(self.head) is nn.Linear and self.head.bias is None

    @property
    def vocab_size(self) -> int:
        return self.embedding.weight.shape[0]

    def hidden_states(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Return the last hidden states ``(B, L, d)`` for token ids or input embeddings."""
        out = self.body(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Return total, input-embedding and matmul parameter counts (shared tensors counted once).

    Matmul parameters are the matrices a position is multiplied by: every weight of two or more
    dimensions except the input embedding (a lookup), plus the head even when it is tied to it.
    """
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique)
    parts = CausalLMParts(model)
    embedding = parts.embedding.weight
    matrices = sum(p.numel() for p in unique if p.dim() >= 2 and p is not embedding)
    tied = parts.head.weight is embedding
    matmul = matrices + (embedding.numel() if tied else 0)
    return {"total": total, "embedding": embedding.numel(), "matmul": matmul}


def flops_per_position(model: nn.Module, seq_len: int) -> float:
    """Return training FLOPs per position the transformer sees: ``6 * matmul params + 12 * n_layer * d * L``.

    The first term is forward (2) plus backward (4) FLOPs per weight; the second is the attention
    score and value products (PaLM's convention, no causal halving), counted at the ``L``
    positions the transformer sees in either phase. Bag averaging and target gathers are excluded.
    """
    c = model.config
    return 6.0 * count_parameters(model)["matmul"] + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len
