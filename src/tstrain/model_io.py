"""Trained models in and out: loading a run, a checkpoint or a model dir, and exporting it as a Hugging Face
model dir (written by ``train.model_dir.export_hf``, as the trainer writes ``final/``).

TST leaves the architecture untouched, so the result is an ordinary ``transformers`` causal LM:
``config.json``, ``model.safetensors``, ``generation_config.json`` and the training tokenizer
(``tokenizer.json`` + ``tokenizer_config.json``), loadable with ``AutoModelForCausalLM`` and
``AutoTokenizer`` and by every tool that reads them.

Sources: a run dir (its ``final/`` model if the run finished, else its newest checkpoint that
verifies), a checkpoint dir ``RUN/checkpoints/step-N`` (the model is rebuilt from
``RUN/config.toml`` and its weights loaded from ``model.safetensors``, or gathered by DCP from a
sharded checkpoint of a torchrun job), or a Hugging Face model dir such as ``RUN/final``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import Config, load_config
from .data.tokens import MANIFEST as DATA_MANIFEST
from .errors import CheckpointError
from .fileio import read_json_object, sha256_file
from .models import build_model
from .train import checkpoint as ckpt
from .train.model_dir import export_hf, fast_tokenizer, final_problem, quiet_transformers
from .train.run_dir import CHECKPOINTS, FINAL, TOKENIZER
from .train.run_dir import CONFIG as RUN_CONFIG
from .train.run_dir import DATA_IDENTITY as RUN_DATA


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "state.json").is_file()


def check_model_dir(path: Path) -> None:
    """Refuse a model dir that would make ``transformers`` run code or unpickle: a ``config.json`` with
    ``auto_map`` (the dir's own Python code) or a model type ``transformers`` does not ship, and weights
    only as a pickle (``pytorch_model.bin``). tstrain loads safetensors and shipped architectures only."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    try:
        config = json.loads((path / "config.json").read_text())
        model_type = config.get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path / 'config.json'} is not a readable JSON object ({e}); re-export the model "
                              "with `tstrain export`") from None
    for name in ("config.json", "tokenizer_config.json"):
        if "auto_map" in (config if name == "config.json" else _json_or_empty(path / name)):
            raise CheckpointError(f"{path / name} names its own code (auto_map), which tstrain never runs: load only "
                                  "model dirs of architectures transformers ships (remove auto_map if it is one)")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise CheckpointError(f"{path / 'config.json'} has model_type {model_type!r}, which transformers does not "
                              "ship; tstrain loads no custom model code")
    if not any((path / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        held = ("only a pickled pytorch_model.bin, which tstrain does not load (a pickle can run code)"
                if (path / "pytorch_model.bin").is_file() else "no model.safetensors")
        fix = (f"write it again from the run's last checkpoint with `tstrain train --out {path.parent} --resume`"
               if path.name == FINAL and (path.parent / RUN_CONFIG).is_file()
               else "export the model as safetensors (`tstrain export RUN --out DIR`)")
        raise CheckpointError(f"{path} holds {held}; {fix}")


def _from_pretrained(path: Path) -> torch.nn.Module:
    """Return the model of a checked model dir (``check_model_dir``): safetensors only, no code of its own."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False,
                                                    use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"cannot load the model in {path} ({str(e).splitlines()[0][:200]}): a file is cut short "
                              "or corrupt; export it again from its run (`tstrain export RUN --out DIR`)") from None


def _json_or_empty(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _run_config(run: Path) -> Config:
    if not (run / RUN_CONFIG).is_file():
        raise CheckpointError(f"{run} has no {RUN_CONFIG}: cannot tell which model the checkpoint belongs to")
    return load_config(config_file=run / RUN_CONFIG)


def run_tokenizer(run: Path) -> tuple[Path | None, str | None]:
    """Return the tokenizer file a run trained with and its EOS token, checked against the run's record.

    The run's own copy (``RUN/tokenizer.json``) first, then its ``final/`` model's; a run made before
    it kept a copy falls back on its data dir's file, if that is still the one recorded in ``data.json``.
    """
    record = read_json_object(run / RUN_DATA, CheckpointError, "restore it") if (run / RUN_DATA).is_file() else {}
    want, eos = record.get("tokenizer_sha256"), record.get("eos_token")
    own = run / TOKENIZER
    if own.is_file():
        _refuse_other_tokenizer(own, want, run / RUN_DATA, "restore it, or export the run's final/ model instead")
        return own, eos or _eos_of(run / FINAL)
    if (run / FINAL / TOKENIZER).is_file():
        _refuse_other_tokenizer(run / FINAL / TOKENIZER, want, run / RUN_DATA, _FINAL_FIX)
        return run / FINAL / TOKENIZER, eos or _eos_of(run / FINAL)
    data = Path(load_config(config_file=run / RUN_CONFIG).data.path or "") if (run / RUN_CONFIG).is_file() else None
    if data is None or not (data / TOKENIZER).is_file():
        return None, None
    _refuse_other_tokenizer(data / TOKENIZER, want, run / RUN_DATA, "restore the run's data dir",
                            f"{run} keeps no tokenizer of its own, and {data / TOKENIZER} is no longer the one it "
                            "trained with")
    return data / TOKENIZER, eos or _json_or_empty(data / DATA_MANIFEST).get("eos_token")


_FINAL_FIX = "restore it from RUN/tokenizer.json, or export the run again"


def check_model_tokenizer(model_dir: Path) -> None:
    """Raise CheckpointError if a run's model dir (``RUN/final``) holds another tokenizer than the run trained with.

    Loaders that read the model dir's own files (lm-eval, ``transformers``) would otherwise pair the
    weights with whatever ``tokenizer.json`` was copied there.
    """
    run, own = model_dir.parent, model_dir / TOKENIZER
    if not (run / RUN_CONFIG).is_file() or not (run / RUN_DATA).is_file() or not own.is_file():
        return
    want = read_json_object(run / RUN_DATA, CheckpointError, "restore it").get("tokenizer_sha256")
    _refuse_other_tokenizer(own, want, run / RUN_DATA, _FINAL_FIX)


def _refuse_other_tokenizer(file: Path, want: str | None, record: Path, fix: str, what: str = "") -> None:
    """Raise CheckpointError if ``file``'s SHA-256 is not ``want``, the hash the run recorded in ``record``."""
    if want and sha256_file(file) != want:
        raise CheckpointError(f"{what or f'{file} is not the tokenizer the run trained with'} (its SHA-256 differs "
                              f"from {record}'s: cut short, edited or replaced): {fix}")


def _eos_of(model_dir: Path) -> str | None:
    """Return the EOS token a model dir's ``tokenizer_config.json`` names (None if none)."""
    eos = _json_or_empty(model_dir / "tokenizer_config.json").get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos if isinstance(eos, str) else None


def _tokenizer_of(run: Path | None, model_dir: Path | None) -> tuple[Path | None, str | None]:
    """Return the training tokenizer file and its EOS token: the run's own (checked), else ``model_dir``'s."""
    if run is not None:
        found = run_tokenizer(run)
        if found[0] is not None:
            return found
    if model_dir is not None and (model_dir / TOKENIZER).is_file():
        return model_dir / TOKENIZER, _eos_of(model_dir)
    return None, None


def run_of(source: str | Path) -> Path | None:
    """Return the run dir a source belongs to (a run dir, its ``final/``, one of its checkpoints), else None."""
    path = Path(source)
    candidates = (path, path.parent.parent) if path.parent.name == CHECKPOINTS else (path, path.parent)
    return next((c for c in candidates if (c / RUN_CONFIG).is_file()), None)


def run_settings(source: str | Path) -> Config | None:
    """Return the saved config of the run ``source`` belongs to (None: a bare model dir)."""
    run = run_of(source)
    return _run_config(run) if run is not None else None


def load_trained_model(source: str | Path) -> tuple[torch.nn.Module, Path | None, str | None]:
    """Return ``(model, tokenizer.json, eos_token)`` for a run dir, a checkpoint dir or a Hugging Face model dir.

    The model is in float32 on the CPU, in eval mode.
    """

    quiet_transformers()
    path = Path(source)
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist; pass a run dir, RUN/checkpoints/step-N or a model dir")
    if (path / RUN_CONFIG).is_file() and not _is_hf_dir(path):  # a run dir
        if _is_hf_dir(path / FINAL):
            path = path / FINAL
        else:
            found = ckpt.latest_good_checkpoint(path / CHECKPOINTS)
            if found is None:
                raise CheckpointError(f"run {path} has neither final/ nor a checkpoint that verifies")
            path = found[0]
    if _is_hf_dir(path):
        check_model_dir(path)
        run = path.parent if (path.parent / RUN_CONFIG).is_file() else None
        tokenizer, eos = _tokenizer_of(run, path)
        model = _from_pretrained(path)
        check_run_model(path)  # after the loaders' own checks, which name a cut-short file or a tokenizer
    elif (path / "state.json").is_file():
        ckpt.verify_checkpoint(path)
        run = path.parent.parent
        cfg = _run_config(run)
        tokenizer, eos = _tokenizer_of(run, run / FINAL)
        model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len)
        ckpt.load_checkpoint(path, model, None)  # either form: single-process or sharded (DCP)
    else:
        raise CheckpointError(
            f"{path} is not a run dir (config.toml), a checkpoint (state.json) "
            "or a Hugging Face model dir (config.json)"
        )
    model.eval()
    return model, tokenizer, eos


def check_run_model(model_dir: Path) -> None:
    """Verify a run's ``final/`` (``verify_final``); any other model dir is read as it is."""
    if model_dir.name == FINAL and (model_dir.parent / RUN_CONFIG).is_file():
        verify_final(model_dir.parent)


def verify_final(run: Path) -> None:
    """Raise ``CheckpointError`` if ``RUN/final/`` is not the model its run recorded (``final_problem``)."""
    problem = final_problem(run)
    if problem:
        raise CheckpointError(f"{problem}: write it again from the run's last checkpoint with "
                              f"`tstrain train --out {run} --resume`")


def export(source: str | Path, out: str | Path) -> Path:
    """Write the Hugging Face model dir of ``source`` (run, checkpoint or model dir) to ``out``; return ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; choose a new --out")
    model, tokenizer, eos = load_trained_model(source)
    if tokenizer is None:
        raise CheckpointError(
            f"no tokenizer found for {source}: the run, its final/ and its data dir hold no tokenizer.json"
        )
    return export_hf(model, out, tokenizer, eos)


def load_model_dir(source: str | Path, device: str = "cpu", with_tokenizer: bool = True):
    """Return ``(model, tokenizer)`` of a model dir, a run dir or a checkpoint, in float32 and eval mode.

    The tokenizer is the training tokenizer (``transformers``' fast tokenizer over its
    ``tokenizer.json``, with the run's EOS token); None when ``with_tokenizer`` is false.
    """
    model, tokenizer_file, eos = load_trained_model(source)
    tokenizer = None
    if with_tokenizer:
        if tokenizer_file is None:
            raise CheckpointError(f"{source} has no tokenizer files; re-export it with `tstrain export`")
        tokenizer = fast_tokenizer(tokenizer_file, eos)
    return model.to(device), tokenizer
