"""Sampling text from a trained model with ``transformers``' ``generate``.

It works on any Hugging Face causal LM directory (``tstrain export`` output, ``RUN/final``), so it
checks the claim that a TST-trained model is an ordinary checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .errors import ConfigError
from .model_io import load_model_dir
from .train.device import named_device


def within_context(model, prompt_tokens: int, max_new_tokens: int) -> int:
    """Return how many tokens to generate: ``max_new_tokens``, cut at the model's context (its position
    embeddings, ``max_position_embeddings``), so the work is bounded by the model, never by the number asked
    for; a prompt that fills the context alone is refused."""
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if not context:
        return max_new_tokens
    if prompt_tokens >= context:
        raise ConfigError(f"the prompt is {prompt_tokens} tokens, and the model's context is {context}: no room "
                          "to continue it; give a shorter prompt")
    if prompt_tokens + max_new_tokens > context:
        print(f"generating {context - prompt_tokens} tokens, not {max_new_tokens}: the model's context is {context} "
              f"tokens and the prompt takes {prompt_tokens}", file=sys.stderr)
    return min(max_new_tokens, context - prompt_tokens)


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
    """Return ``prompt`` followed by up to ``max_new_tokens`` sampled tokens (at most up to the model's
    context), decoded.

    Greedy decoding, or sampling at ``temperature`` from the nucleus of mass ``top_p``; sampling
    is repeatable for a given ``seed``. Generation stops early at the EOS token.
    """
    if not prompt:
        raise ConfigError("the prompt is empty; give some text to continue (the tokenizer adds no BOS token)")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # bytes that are not UTF-8 reach Python as lone surrogates
        raise ConfigError(f"the prompt is not valid UTF-8 text (byte {e.start} on); give it as UTF-8") from None
    if not 0 <= seed < 2**63:
        raise ConfigError(f"the sampling seed must be in [0, 2^63); got {seed}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if not greedy and not (0 < temperature < float("inf") and 0 < top_p <= 1):  # also catches nan
        raise ConfigError(f"sampling needs temperature > 0 and 0 < top_p <= 1; "
                          f"got {temperature}, {top_p} (or use greedy)")
    model, tokenizer = load_model_dir(model_dir, named_device(device))
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    max_new_tokens = within_context(model, inputs["input_ids"].shape[1], max_new_tokens)
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=not greedy, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0], skip_special_tokens=False)
