"""A run's model dir: ``final/`` written as a Hugging Face model dir (``export_hf``, whole or not at all), the
record of its files (``RUN/final.json``) and the check against it (``final_problem``). The trainer writes it;
``tstrain export`` (``model_io``) writes the same kind of dir from any run, checkpoint or model dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..faults import maybe_fill
from ..fileio import atomic_dir, write_text_atomic
from . import checkpoint as ckpt
from .run_dir import FINAL, FINAL_RECORD


def quiet_transformers() -> None:
    """Turn off ``transformers``' own progress bars (loading and writing shards of a small model):
    tstrain prints what it does, and a console of bars hides the one line that matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def fast_tokenizer(tokenizer_file: Path, eos_token: str | None):
    """Return ``transformers``' fast tokenizer over a ``tokenizer.json``; a file that does not parse is one line."""
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), eos_token=eos_token)
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        raise CheckpointError(f"{tokenizer_file} is not a readable tokenizer.json ({str(e).splitlines()[0][:200]}): "
                              "it is cut short or corrupt; restore it from the run's data dir") from None


def final_problem(run: Path) -> str | None:
    """Return how ``RUN/final/`` differs from the sizes and SHA-256s its run recorded (``RUN/final.json``) as it
    was written (None: it matches, or the run recorded none: a model dir from elsewhere, an older run)."""
    record = run / FINAL_RECORD
    if not record.is_file():
        return None
    try:
        ckpt.check_files(run / FINAL, ckpt.manifest_files(record, "restore it"), str(record))
    except CheckpointError as e:
        return str(e)
    return None


def export_hf(model, out_dir: Path, tokenizer_file: Path | None = None, eos_token: str | None = None,
              state_dict: dict[str, torch.Tensor] | None = None, record: Path | None = None) -> Path:
    """Write a Hugging Face model dir (config + safetensors, and tokenizer files when given).

    The dir is written under a temporary name beside ``out_dir`` and renamed into place once complete
    (``fileio.atomic_dir``): a full disk is one ``WriteError`` naming ``out_dir``, with ``out_dir`` as it was
    and no partial dir left. ``record`` (``RUN/final.json``) gets each file's size and SHA-256 before the rename.

    The EOS token becomes the config's and generation config's ``eos_token_id`` (and pad id), so
    ``generate`` stops at the end of a document; the KV cache is switched back on for inference.
    ``state_dict`` overrides the model's own weights (the gathered weights of a sharded model).
    """
    quiet_transformers()
    tok = None
    if tokenizer_file is not None and tokenizer_file.is_file():
        tok = fast_tokenizer(tokenizer_file, eos_token)
        if tok.eos_token_id is not None:
            model.config.eos_token_id = tok.eos_token_id
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.eos_token_id = tok.eos_token_id
                model.generation_config.pad_token_id = tok.eos_token_id
    model.config.use_cache = True  # training passes use_cache=False explicitly; inference wants the cache
    weights = state_dict.values() if state_dict is not None else model.state_dict().values()
    with atomic_dir(out_dir, "the model dir", sum(t.numel() * t.element_size() for t in weights)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        maybe_fill("full-model")
        if tok is not None:
            tok.save_pretrained(tmp)
        if record is not None:
            write_text_atomic(record, json.dumps({"files": ckpt.file_entries(tmp)}, indent=2) + "\n")
    return out_dir
