"""Checkpoints that survive crashes, resume exactly, and export to a Hugging Face model dir.

A checkpoint is a directory ``step-NNNNNNNN`` holding ``model.safetensors``, ``optimizer.pt``,
``rng.pt`` and ``state.json``, plus ``manifest.json`` (each file's size and SHA-256) written
last. It is assembled under a temporary name, fsynced and renamed, so a crash mid-write leaves
at most a ``.tmp-*`` directory that is never taken for a checkpoint. Loading never runs code from
the files: safetensors for weights, ``torch.load(weights_only=True)`` for the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from .data import sha256_file

PREFIX = "step-"
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack([s for s in torch.cuda.get_rng_state_all()])
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(root: Path, step: int, model, optimizer, state: dict[str, Any]) -> Path:
    """Write the checkpoint for ``step`` completed steps atomically; return its directory."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    files = {}
    for f in sorted(tmp.iterdir()):
        _fsync_file(f)
        files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2) + "\n")
    _fsync_file(tmp / MANIFEST)
    _fsync_dir(tmp)
    if final.exists():  # re-writing the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Return the checkpoint's state.json after checking every file against the manifest."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path} has no {MANIFEST}: it was never completed")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{mpath} is not valid JSON") from None
    for name, meta in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{path}: {name} has {f.stat().st_size} bytes, the manifest says {meta['bytes']} (truncated)")
        if sha256_file(f) != meta["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its SHA-256 in the manifest (corrupt)")
    return json.loads((path / "state.json").read_text())


def list_checkpoints(root: Path) -> list[Path]:
    """Return the completed-looking checkpoint dirs under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_good_checkpoint(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """Return the newest checkpoint that verifies, warning about each newer one that does not."""
    for path in reversed(list_checkpoints(root)):
        try:
            return path, verify_checkpoint(path)
        except (CheckpointError, OSError, KeyError, json.JSONDecodeError) as e:
            warnings.warn(f"skipping checkpoint {path.name}: {e}; falling back to the previous one")
    return None


def load_checkpoint(path: Path, model, optimizer) -> None:
    """Load weights, optimizer state and RNG state from a verified checkpoint directory."""
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, sparing the one written at the phase switch."""
    ckpts = list_checkpoints(root)
    for path in ckpts[:-keep] if keep > 0 else ckpts:
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        if not state.get("at_switch"):
            shutil.rmtree(path, ignore_errors=True)
    for tmp in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)


def export_hf(model, out_dir: Path, tokenizer_file: Path | None = None, eos_token: str | None = None) -> Path:
    """Write a Hugging Face model dir (config + safetensors, and tokenizer files when given).

    The EOS token becomes the config's and generation config's ``eos_token_id`` (and pad id), so
    ``generate`` stops at the end of a document; the KV cache is switched back on for inference.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = None
    if tokenizer_file is not None and tokenizer_file.is_file():
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), eos_token=eos_token)
        if tok.eos_token_id is not None:
            model.config.eos_token_id = tok.eos_token_id
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.eos_token_id = tok.eos_token_id
                model.generation_config.pad_token_id = tok.eos_token_id
    model.config.use_cache = True  # training passes use_cache=False explicitly; inference wants the cache
    model.save_pretrained(out_dir, safe_serialization=True)
    if tok is not None:
        tok.save_pretrained(out_dir)
    return out_dir
