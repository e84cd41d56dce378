"""Building Hugging Face causal LMs from our config (or a ``config.json``), their FLOPs and parameter counts.

TST touches only the input embedding and the output head, so any ``transformers`` causal LM
whose ``get_input_embeddings()``, ``base_model`` and ``get_output_embeddings()`` are reachable can
be trained (``model_parts.CausalLMParts`` reaches them); nothing inside the model is modified.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .errors import ConfigError
from .model_parts import CausalLMParts


def transformers():
    """Return the ``transformers`` module, or raise naming the extra that installs it."""
    try:
        import transformers as module
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "transformers":
            raise
        raise ModuleNotFoundError("tstrain.models builds Hugging Face models, which needs transformers: "
                                  "pip install 'tstrain[hf]'", name="transformers") from None
    return module


def _rope_family_kwargs(cfg: ModelConfig, vocab_size: int, seq_len: int) -> dict:
    """Return the keyword arguments the Llama-like families (llama, mistral, qwen3, qwen3_moe) share."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim or cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings or seq_len,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=False,
    )


def config_from_file(path: str | Path, vocab_size: int = 0, seq_len: int = 0):
    """Return the ``transformers`` config of a Hugging Face ``config.json``, with our vocabulary if given.

    The file defines the architecture; only the vocabulary follows the run (the data's tokenizer,
    or ``model.vocab_size``), so any causal LM config can be trained on any prepared data.
    """
    AutoConfig = transformers().AutoConfig
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read model.config_file {path}: {e}; pass a Hugging Face config.json") from None
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"{path} has no \"model_type\"; it is not a Hugging Face model config.json")
    for key in ("architectures", "transformers_version", "_name_or_path", "auto_map"):
        values.pop(key, None)
    try:
        config = AutoConfig.for_model(model_type, **values)
    except ValueError as e:
        raise ConfigError(f"{path}: model_type {model_type!r} is not known to transformers ({e})") from None
    if vocab_size:
        config.vocab_size = vocab_size
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # ids of the file's tokenizer, not ours
            if isinstance(getattr(config, key, None), int) and getattr(config, key) >= vocab_size:
                setattr(config, key, None)
    positions = getattr(config, "max_position_embeddings", None)
    if seq_len and positions is not None and positions < seq_len:
        raise ConfigError(
            f"{path} allows {positions} positions (max_position_embeddings), fewer than train.seq_len={seq_len}; "
            "lower train.seq_len or raise it in the file"
        )
    return config


def hf_config(cfg: ModelConfig, vocab_size: int, seq_len: int):
    """Return the ``transformers`` config object for ``cfg`` (no hub access).

    ``vocab_size`` 0 keeps a config file's own vocabulary (for ``tstrain info``).
    """
    t = transformers()
    GPT2Config, LlamaConfig, MistralConfig, Qwen3Config, Qwen3MoeConfig = (
        t.GPT2Config, t.LlamaConfig, t.MistralConfig, t.Qwen3Config, t.Qwen3MoeConfig)
    if cfg.config_file:
        return config_from_file(cfg.config_file, vocab_size, seq_len)
    if cfg.family == "gpt2":
        # Learned absolute positions: the transformer still sees positions 0..L-1 in both phases.
        no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2Config(
            vocab_size=vocab_size, n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size, n_positions=cfg.max_position_embeddings or seq_len,
            layer_norm_epsilon=cfg.rms_norm_eps, initializer_range=cfg.init_std,
            tie_word_embeddings=cfg.tie_embeddings, bos_token_id=None, eos_token_id=None, pad_token_id=None,
            use_cache=False, **no_dropout,
        )
    common = _rope_family_kwargs(cfg, vocab_size, seq_len)
    if cfg.family == "llama":
        return LlamaConfig(**common, attention_bias=False, mlp_bias=False)
    if cfg.family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if cfg.family == "qwen3":
        return Qwen3Config(**common, attention_bias=False, use_sliding_window=False)
    if cfg.family == "qwen3_moe":
        return Qwen3MoeConfig(
            **common, attention_bias=False, use_sliding_window=False, num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
            router_aux_loss_coef=cfg.router_aux_loss_coef, norm_topk_prob=True, decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    raise ConfigError(f"unsupported model.family {cfg.family!r}; set model.config_file to a config.json")


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int, device: str | torch.device | None = None) -> nn.Module:
    """Return a freshly initialised causal LM (float32 weights), seeded by the caller's RNG.

    ``device="meta"`` builds the shapes only: no memory, instant even for a 10B-parameter MoE.
    """
    return model_from_config(hf_config(cfg, vocab_size, seq_len), device)


def model_from_config(config, device: str | torch.device | None = None) -> nn.Module:
    """Return a causal LM built from a ``transformers`` config object (on ``device`` if given)."""
    AutoModelForCausalLM = transformers().AutoModelForCausalLM
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def _experts_per_token(config) -> float:
    """Return the fraction of routed-expert weights one position uses (1 for a dense model)."""
    total = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    k = getattr(config, "num_experts_per_tok", None)
    return k / total if total and k else 1.0


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Return parameter counts: total, active (per position, for MoE), lookup embeddings, matmul and active matmul.

    Shared tensors are counted once. ``embedding`` is every lookup table (token and, for GPT-2,
    position embeddings); the LM head is a matmul even when it shares the token embedding's
    weight; ``matmul`` leaves out vectors (norm weights, biases), which multiply nothing.
    ``active`` counts each routed-expert weight times ``num_experts_per_tok / num_experts``:
    the weights one position runs through. Works on the meta device.
    """
    parts = CausalLMParts(model)
    total, experts, vectors = 0, 0, 0
    for name, p in model.named_parameters():  # deduplicates tied weights
        total += p.numel()
        vectors += p.numel() if p.dim() < 2 else 0
        if "experts" in name.split("."):
            experts += p.numel()
    lookup = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding)}
    if parts.head.weight is parts.embedding.weight:
        lookup.pop(id(parts.head.weight), None)
    embedding = sum(lookup.values())
    active = total - round(experts * (1.0 - _experts_per_token(model.config)))
    return {"total": total, "active": active, "embedding": embedding,
            "matmul": total - embedding - vectors, "matmul_active": active - embedding - vectors}


def flops_per_position(model: nn.Module, seq_len: int) -> float:
    """Return training FLOPs per position the transformer sees:
    ``6 * active matmul params + 12 * n_layer * d_attn * L``.

    The first term is forward (2) plus backward (4) FLOPs per weight a position runs through (for
    a mixture of experts, only its ``num_experts_per_tok`` experts); the second is the attention
    score and value products (PaLM's convention, no causal halving) with ``d_attn = heads *
    head_dim`` (``d`` for most models), counted at the ``L`` positions the transformer sees in
    either phase. Bag averaging and target gathers are excluded.
    """
    c = model.config
    heads = c.num_attention_heads
    d_attn = heads * (getattr(c, "head_dim", None) or c.hidden_size // heads)
    return 6.0 * count_parameters(model)["matmul_active"] + 12.0 * c.num_hidden_layers * d_attn * seq_len


# Bytes per parameter of a mixed-precision AdamW run: fp32 master weights, fp32 gradients, and
# AdamW's two fp32 moments. Activations, buffers and framework overhead are not included.
TRAINING_BYTES = {"weights_fp32": 4, "grads_fp32": 4, "adamw_moments_fp32": 8}


def model_info(cfg: ModelConfig, vocab_size: int, seq_len: int) -> dict:
    """Return sizes, FLOPs and memory of the model ``cfg`` describes, built on the meta device (no memory)."""
    model = build_model(cfg, vocab_size, seq_len, device="meta")
    counts = count_parameters(model)
    c = model.config
    memory = {key: n * counts["total"] for key, n in TRAINING_BYTES.items()}
    memory["training_total"] = sum(memory.values())
    memory["weights_bf16"] = 2 * counts["total"]
    return {
        "model_type": c.model_type,
        "vocab_size": c.vocab_size,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "tied_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
        "experts": getattr(c, "num_experts", None) or getattr(c, "num_local_experts", None) or 0,
        "experts_per_token": getattr(c, "num_experts_per_tok", None) or 0,
        "seq_len": seq_len,
        "parameters": counts,
        "flops_per_token": flops_per_position(model, seq_len),
        "memory_bytes": memory,
    }


def _short(n: float) -> str:
    """Return a count in K, M or B with four significant digits."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n:g}"


def model_info_text(info: dict, vocab_note: str = "") -> str:
    """Return ``model_info`` as the lines ``tstrain info`` prints; ``vocab_note`` says where the vocabulary
    came from."""
    p, mem = info["parameters"], info["memory_bytes"]
    gib = 2.0**30
    moe = f", {info['experts']} experts ({info['experts_per_token']} per token)" if info["experts"] else ""
    lines = [
        f"model        {info['model_type']}, {info['layers']} layers, d={info['hidden_size']}, "
        f"vocabulary {info['vocab_size']:,}{vocab_note}, "
        f"{'tied' if info['tied_embeddings'] else 'untied'} embeddings{moe}",
        f"parameters   {p['total']:,} total ({_short(p['total'])})"
        + (f", {p['active']:,} active per token ({_short(p['active'])})" if p["active"] != p["total"] else "")
        + f"; {p['embedding']:,} in embedding lookups",
        f"FLOPs/token  {info['flops_per_token']:.4g} to train at seq_len {info['seq_len']} "
        "(6 x active matmul params + 12 x layers x d_attn x seq_len; a third of it forward only)",
        f"memory       {mem['training_total'] / gib:,.2f} GiB to train with AdamW: "
        f"fp32 weights {mem['weights_fp32'] / gib:,.2f} "
        f"+ fp32 gradients {mem['grads_fp32'] / gib:,.2f} "
        f"+ two fp32 AdamW moments {mem['adamw_moments_fp32'] / gib:,.2f} "
        f"(16 bytes/param; activations not included); {mem['weights_bf16'] / gib:,.2f} GiB of bf16 weights to serve",
    ]
    return "\n".join(lines)
