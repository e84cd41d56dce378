"""The tokenizer of a data dir: loaded from a file or a Hugging Face dir, or trained (byte-level BPE); its EOS
token, the dtype its ids are stored in, and the hash that names it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import DataError

MAX_TRAINED_VOCAB = 1 << 21  # the BPE trainer allocates tables of the vocabulary's size up front
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, eos_token: str = "<|endoftext|>", progress: bool = True):
    """Return a byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts``, with ``eos_token`` special."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + 2:
        raise DataError(f"--train-tokenizer vocab size must exceed the 256 byte symbols; got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def find_eos(tokenizer, eos_token: str | None) -> tuple[str, int]:
    """Return ``(eos_token, eos_id)`` of a tokenizer, from the name given or the usual names."""
    names = [eos_token] if eos_token else list(EOS_CANDIDATES)
    for name in names:
        idx = tokenizer.token_to_id(name)
        if idx is not None:
            return name, idx
    if eos_token:
        raise DataError(f"the tokenizer has no token {eos_token!r}; "
                        "pass the name of its end-of-text token with --eos-token")
    raise DataError(f"the tokenizer has none of {EOS_CANDIDATES}; pass its end-of-text token with --eos-token")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def load_tokenizer(path: str | Path, eos_token: str | None) -> tuple[object, str | None]:
    """Return ``(tokenizer, EOS name)`` from a tokenizer.json, or a Hugging Face tokenizer dir (the SmolLM2
    or Llama-3 layout) whose ``tokenizer_config.json`` names the EOS token when none is given."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        config = path / "tokenizer_config.json"
        if eos_token is None and config.is_file():
            named = json.loads(config.read_text()).get("eos_token")
            eos_token = named.get("content") if isinstance(named, dict) else named
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist")
    try:
        return Tokenizer.from_file(str(path)), eos_token
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        raise DataError(f"{path} is not a tokenizers tokenizer.json ({str(e).splitlines()[0][:200]})") from None


def tokenizer_sha(tok) -> str:
    """Return the SHA-256 of a tokenizer's canonical serialization (not of its file's formatting)."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()
