"""Sampling text from a trained model with ``transformers``' ``generate``.

It works on any Hugging Face causal LM directory (``tstrain export`` output, ``RUN/final``), so it
checks the claim that a TST-trained model is an ordinary checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError
from .model_io import load_model_dir


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
    if not 0 <= seed < 2**63:
        raise ConfigError(f"the sampling seed must be in [0, 2^63); got {seed}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if not greedy and not (0 < temperature < float("inf") and 0 < top_p <= 1):  # also catches nan
        raise ConfigError(f"sampling needs temperature > 0 and 0 < top_p <= 1; "
                          f"got {temperature}, {top_p} (or use greedy)")
    model, tokenizer = load_model_dir(model_dir, device)
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=not greedy, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0], skip_special_tokens=False)
