"""Checkpoints that survive crashes and resume exactly.

A checkpoint is a directory ``step-NNNNNNNN`` holding ``model.safetensors``, ``optimizer.pt``,
``rng.pt`` and ``state.json``, plus ``manifest.json`` (each file's size and SHA-256) written
last. It is assembled under a temporary name, fsynced and renamed, so a crash mid-write leaves
at most a ``.tmp-*`` directory that is never taken for a checkpoint. Loading never runs code from
the files: safetensors for weights, ``torch.load(weights_only=True)`` for the rest.

A job of several processes (torchrun) writes the sharded form instead: ``dcp/`` is a
``torch.distributed.checkpoint`` directory (each process writes its shards of the model and the
optimizer), ``rng-R.pt`` holds process R's RNG state; ``state.json`` and the manifest are as above
and written by rank 0 once every process has finished. DCP re-shards on load, so a sharded
checkpoint resumes on any number of processes, one included, and a single-process checkpoint
resumes under torchrun. DCP's own ``.metadata`` is a pickle: it is checked with an allow-list of
DCP's metadata classes before DCP reads it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..faults import maybe_die, maybe_fill
from ..fileio import free_space, read_json_object, refuse_link, sha256_file

PREFIX = "step-"
MANIFEST = "manifest.json"
DCP_DIR = "dcp"  # the torch.distributed.checkpoint directory of a sharded checkpoint


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
    """Write the checkpoint for ``step`` completed steps atomically; return its directory.

    A failed write (a full disk: ``OSError``, safetensors' ``SafetensorError``, torch's zip writer's
    ``RuntimeError``) removes the temporary dir and raises one ``CheckpointError`` naming the dir, the free
    space and about what the checkpoint needs; the earlier checkpoints are untouched."""
    from safetensors import SafetensorError  # the [hf] extra
    from safetensors.torch import save_model

    try:
        refuse_link(root)
        root.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_tmp(root, step, os.getpid())
    except OSError as e:
        raise _not_written(root, step, e, model) from None
    try:
        save_model(model, str(tmp / "model.safetensors"))
        maybe_fill("full-save", step)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        maybe_die("save", step)
        return _complete(root, tmp, step, state)
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save: a full disk is its zip writer's RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise _not_written(root, step, e, model) from None


def _not_written(root: Path, step: int, e: BaseException, model) -> CheckpointError:
    needed = 3 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights and AdamW's two moments
    return CheckpointError(
        f"could not write the checkpoint of step {step} under {root} ({str(e).splitlines()[0][:200]}; "
        f"{free_space(root)}, about {needed / 2**20:,.1f} MiB needed); the earlier checkpoints are kept. Free space "
        "(or lower train.keep_checkpoints) and continue with --resume"
    )


def _fresh_tmp(root: Path, step: int, tag: int) -> Path:
    tmp = root / f".tmp-{PREFIX}{step:08d}-{tag}"
    if tmp.is_symlink():
        tmp.unlink()
    elif tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _file_entries(tmp: Path, paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Return the manifest entries (size, SHA-256) of ``paths`` inside ``tmp``, fsyncing each file."""
    entries = {}
    for f in paths:
        _fsync_file(f)
        entries[f.relative_to(tmp).as_posix()] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    return entries


def _complete(root: Path, tmp: Path, step: int, state: dict[str, Any], hashed: dict[str, Any] | None = None) -> Path:
    """Write state.json and the manifest into ``tmp``, fsync everything and rename it into place.

    ``hashed`` holds entries other processes already computed (and fsynced); the rest are done here.
    """
    final = root / f"{PREFIX}{step:08d}"
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    hashed = hashed or {}
    rest = [p for p in sorted(tmp.rglob("*")) if p.is_file() and p.relative_to(tmp).as_posix() not in hashed]
    files = dict(sorted({**hashed, **_file_entries(tmp, rest)}.items()))
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2) + "\n")
    _fsync_file(tmp / MANIFEST)
    for d in [p for p in tmp.rglob("*") if p.is_dir()] + [tmp]:
        _fsync_dir(d)
    if refuse_link(final).exists():  # re-writing the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def save_sharded_checkpoint(root: Path, step: int, model, optimizer, state: dict[str, Any], ctx) -> Path:
    """Write the sharded checkpoint of ``step`` from every process of ``ctx``; return its directory.

    All processes write into one temporary directory (named by rank 0); rank 0 completes it only
    after a barrier, so a process killed mid-write leaves no manifest and no ``step-*`` name.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = None
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        name = str(_fresh_tmp(root, step, os.getpid()))
    tmp = Path(ctx.agree(name))  # also a barrier: the directory exists before anyone writes into it
    failed = None
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / DCP_DIR)
        maybe_fill("full-save", step, ctx.rank)
        torch.save(rng_state(), tmp / f"rng-{ctx.rank}.pt")
    except (OSError, RuntimeError, CheckpointException) as e:  # DCP raises one process's failed write on every one
        failed = e
    failures = [f for f in ctx.gather(str(failed).splitlines()[0][:200] if failed else None) if f]
    if failures:  # every process stops here, the same way; rank 0 removes the partial checkpoint
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _not_written(root, step, RuntimeError(failures[0]), model)
    maybe_die("save", step, ctx.rank)
    # Each process fsyncs and hashes the files it wrote (its DCP shards, its RNG state), so the
    # manifest of a large checkpoint costs one shard's hashing, not the whole model's, on rank 0.
    own = [tmp / f"rng-{ctx.rank}.pt", *sorted((tmp / DCP_DIR).glob(f"__{ctx.rank}_*"))]
    hashed = ctx.gather(_file_entries(tmp, own))  # also the barrier: every process has finished writing
    final = root / f"{PREFIX}{step:08d}"
    if ctx.is_main:
        _complete(root, tmp, step, {**state, "world_size": ctx.world_size},
                  {k: v for d in hashed for k, v in d.items()})
    ctx.barrier()
    return final


def manifest_files(mpath: Path, fix: str) -> dict[str, dict[str, Any]]:
    """Return the ``files`` of a manifest (``{name: {"bytes": int, "sha256": str}}``), refusing with
    ``CheckpointError`` a file that is not that shape, naming the file and the field, or a name outside its dir."""
    files = read_json_object(mpath, CheckpointError, fix).get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{mpath} has no 'files' object (the size and SHA-256 of each file): it was edited; "
                              f"{fix}")
    for name, meta in files.items():
        if not (isinstance(meta, dict) and type(meta.get("bytes")) is int and isinstance(meta.get("sha256"), str)):
            raise CheckpointError(f"{mpath}: files.{name} is not {{\"bytes\": int, \"sha256\": str}}: it was "
                                  f"edited; {fix}")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{mpath}: files.{name} names a file outside {mpath.parent}: it was edited; {fix}")
    return files


def check_files(path: Path, files: dict[str, dict[str, Any]], what: str) -> None:
    """Raise ``CheckpointError`` unless every file of ``files`` (``manifest_files``) is in ``path`` with its
    recorded size and SHA-256; ``what`` is the record's name."""
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{path}: {name} has {f.stat().st_size} bytes, "
                                  f"{what} says {meta['bytes']} (truncated)")
        if sha256_file(f) != meta["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its SHA-256 in {what} (corrupt)")


def file_entries(path: Path) -> dict[str, dict[str, Any]]:
    """Return the size and SHA-256 of every file under ``path``, by relative name (what ``check_files`` checks)."""
    return {f.relative_to(path).as_posix(): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
            for f in sorted(path.rglob("*")) if f.is_file()}


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Return the checkpoint's state.json after checking every file against the manifest."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path} has no {MANIFEST}: it was never completed")
    fix = "the checkpoint cannot be trusted; delete it to resume from the one before"
    check_files(path, manifest_files(mpath, fix), "the manifest")
    return read_json_object(path / "state.json", CheckpointError, fix)


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
            warnings.warn(f"skipping checkpoint {path.name}: {e}; falling back to the previous one", stacklevel=2)
    return None


def load_pickle(path: Path) -> Any:
    """Return ``torch.load(path, weights_only=True)``, refusing with CheckpointError a file that would run code."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds more than tensors and plain containers, and unpickling it could "
            f"run code from the file ({str(e).splitlines()[0]}). Use a checkpoint written by tstrain; "
            "delete this one if you did not write it"
        ) from None


_DCP_PATHS = {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits only the classes DCP's metadata is made of: its dataclasses and enums, sizes, dtypes, paths."""

    def find_class(self, module: str, name: str) -> Any:
        import dataclasses
        import enum

        obj = super().find_class(module, name) if module.split(".")[0] in ("torch", "pathlib") else None
        ok = (
            (module.startswith("torch.distributed.checkpoint.") and isinstance(obj, type)
             and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)))
            or (module == "torch" and (name == "Size" or isinstance(obj, torch.dtype)))
            or (module, name) == ("torch.serialization", "_get_layout")
            or (module == "pathlib" and name in _DCP_PATHS)
        )
        if not ok:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP metadata")
        return obj


def check_dcp_metadata(path: Path) -> None:
    """Raise CheckpointError unless ``path/.metadata`` unpickles with DCP's metadata classes alone."""
    meta = path / ".metadata"
    try:
        with open(meta, "rb") as f:
            _MetadataUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise CheckpointError(
            f"refusing to load {meta}: it is not plain DCP metadata ({e}); loading it could run code from the file. "
            "Use a checkpoint written by tstrain; delete this one if you did not write it"
        ) from None


def is_sharded(path: Path) -> bool:
    return (path / DCP_DIR).is_dir()


def load_checkpoint(path: Path, model, optimizer, rank: int = 0) -> None:
    """Load weights, optimizer state and RNG state from a verified checkpoint directory.

    ``model`` and ``optimizer`` may be plain or FSDP2-sharded, and the checkpoint either form: a
    sharded checkpoint is re-sharded by DCP for this number of processes, a single-process one is
    split up by ``set_state_dict``. ``optimizer`` may be None (weights only, e.g. for export).
    """
    sharded_model = any(hasattr(p, "to_local") for p in model.parameters())
    if is_sharded(path):
        _load_dcp(path / DCP_DIR, model, optimizer)
        rng = next((path / n for n in (f"rng-{rank}.pt", "rng-0.pt") if (path / n).is_file()), None)
    elif sharded_model:
        _load_full_into_sharded(path, model, optimizer)
        rng = path / "rng.pt"
    else:
        from safetensors.torch import load_model  # the [hf] extra

        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(load_pickle(path / "optimizer.pt"))
        rng = path / "rng.pt"
    if optimizer is not None and rng is not None:
        set_rng_state(load_pickle(rng))


def _load_dcp(path: Path, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    check_dcp_metadata(path)
    with warnings.catch_warnings():  # DCP warns when it loads without a process group: that is intended here
        warnings.simplefilter("ignore", UserWarning)
        if optimizer is None:
            state = {"model": get_model_state_dict(model)}
            dcp.load(state, checkpoint_id=path)
            set_model_state_dict(model, state["model"])
            return
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _load_full_into_sharded(path: Path, model, optimizer) -> None:
    """Load a single-process checkpoint into an FSDP2 model: each process keeps its shards."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, load_file(path / "model.safetensors"), options=full)
    if optimizer is None:
        return
    saved = load_pickle(path / "optimizer.pt")
    # optimizer.pt numbers parameters in param-group order; DCP's full form names them.
    fqn = {id(p): name for name, p in model.named_parameters()}
    names = [fqn[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {names[i]: s for i, s in saved["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=full)


def full_model_state_dict(model) -> dict[str, torch.Tensor]:
    """Return the whole model's weights on CPU in every process's hands (gathered shards if sharded)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not any(hasattr(p, "to_local") for p in model.parameters()):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def copy_checkpoint(src: Path, root: Path, state: dict[str, Any]) -> Path:
    """Copy the checkpoint ``src`` under ``root`` with ``state`` as its ``state.json``, crash-safe as any checkpoint;
    return its directory. Where one run branches off another (``train.branch``); the caller has verified ``src``
    (``verify_checkpoint`` gives the state it rewrites)."""
    step = int(state["step"])
    root.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_tmp(root, step, os.getpid())
    shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=lambda d, names: [n for n in names if Path(d) == src
                                                                           and n in ("state.json", MANIFEST)])
    return _complete(root, tmp, step, state)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, sparing the one written at the phase switch and those
    written where other runs branch off (``branch_point``)."""
    ckpts = list_checkpoints(root)
    for path in ckpts[:-keep] if keep > 0 else ckpts:
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, json.JSONDecodeError):
            state = {}
        if not (state.get("at_switch") or state.get("branch_point")):
            shutil.rmtree(path, ignore_errors=True)
    for tmp in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)
