"""Using an exported model: sampling text with ``transformers``' ``generate``, and held-out loss.

Both work on any Hugging Face causal LM directory (``tstrain export`` output, ``RUN/final``), so
they check the claim that a TST-trained model is an ordinary checkpoint.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataError, TokenData
from .reader import validation_windows
from .models import CausalLMParts
from .train import validation_loss


def load_model_dir(model_dir: str | Path, device: str = "cpu", with_tokenizer: bool = True):
    """Return ``(model, tokenizer)`` of a Hugging Face model dir, in float32 and eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").is_file() and (path / "final" / "config.json").is_file():
        path = path / "final"  # a finished run dir: its final model
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is not a Hugging Face model dir (no config.json); make one with `tstrain export RUN --out DIR`"
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    tokenizer = None
    if with_tokenizer:
        if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
            raise CheckpointError(f"{path} has no tokenizer files; re-export it with `tstrain export`")
        tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def generate(
    model_dir: str | Path,
    prompt: str,
    max_new_tokens: int = 64,
    greedy: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> str:
    """Return ``prompt`` followed by up to ``max_new_tokens`` sampled tokens, decoded.

    Greedy decoding, or sampling at ``temperature`` from the nucleus of mass ``top_p``; sampling
    is repeatable for a given ``seed``. Generation stops early at the EOS token.
    """
    if not prompt:
        raise ConfigError("the prompt is empty; give some text to continue (the tokenizer adds no BOS token)")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if not greedy and (temperature <= 0 or not 0 < top_p <= 1):
        raise ConfigError(f"sampling needs temperature > 0 and 0 < top_p <= 1; got {temperature}, {top_p} (or use greedy)")
    model, tokenizer = load_model_dir(model_dir, device)
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=not greedy, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0], skip_special_tokens=False)


def evaluate(
    model_dir: str | Path,
    data_dir: str | Path,
    seq_len: int = 0,
    windows: int = 64,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict[str, float]:
    """Return the next-token ``loss`` (nats) and ``perplexity`` on a prepared data dir's validation split.

    The same fixed windows of ``seq_len + 1`` tokens and the same loss as the trainer's
    ``val_loss`` (``seq_len`` 0: the model's ``max_position_embeddings``), so a run's logged
    value and this one agree.
    """
    model, _ = load_model_dir(model_dir, device, with_tokenizer=False)
    data = TokenData(data_dir)
    parts = CausalLMParts(model)
    if data.vocab_size > parts.vocab_size:
        raise DataError(
            f"{data_dir} uses a vocabulary of {data.vocab_size} tokens but the model has {parts.vocab_size}: "
            "the data was prepared with another tokenizer; prepare it with the model's tokenizer.json"
        )
    positions = getattr(model.config, "max_position_embeddings", None)
    seq_len = seq_len or positions or 0
    if seq_len < 1:
        raise ConfigError("the model config gives no max_position_embeddings; pass seq_len")
    if positions and seq_len > positions:
        raise ConfigError(f"seq_len {seq_len} exceeds the model's {positions} positions; lower it")
    val = validation_windows(data.val, seq_len, windows)
    loss = validation_loss(parts, val, batch_size, torch.device(device), contextlib.nullcontext)
    return {"loss": loss, "perplexity": math.exp(loss), "windows": int(val.shape[0]), "seq_len": seq_len,
            "tokens": int(val.shape[0] * seq_len)}
