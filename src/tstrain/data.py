"""Tokenizing text into packed token files, and opening them.

On disk a prepared data dir holds ``train.bin`` and ``val.bin`` (raw uint16/uint32 token ids,
documents joined with EOS, read by memory map), ``tokenizer.json`` and ``manifest.json``. Which
windows of ``train.bin`` a run reads is the reader's business (``reader.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import DataError
from .fileio import sha256_file, write_text_atomic
from .text_sources import TextStats, expand_inputs, iter_documents

MANIFEST = "manifest.json"
FORMAT = "tstrain-tokens-v1"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


# ----------------------------------------------------------------------------------------------
# Reading text sources
# ----------------------------------------------------------------------------------------------


def is_validation_doc(index: int, val_fraction: float, seed: int) -> bool:
    """Return whether document ``index`` is held out: a fixed hash, so re-runs split the same way."""
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# prepare-data
# ----------------------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def prepare_data(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tokenizer: str | Path | None = None,
    train_tokenizer: int = 0,
    eos_token: str | None = None,
    val_fraction: float = 0.01,
    seed: int = 0,
    doc_separator: str | None = None,
    progress: bool = True,
    batch_docs: int = 256,
    overwrite: bool = False,
    max_bad_text: float = 0.001,
    text_field: str = "text",
) -> dict:
    """Tokenize ``inputs`` into ``out_dir`` (train.bin, val.bin, tokenizer.json, manifest.json).

    ``inputs`` are files, directories or globs (``text_sources``); the text is in ``text_field``.
    Give an existing ``tokenizer`` (a tokenizer.json, or a Hugging Face tokenizer dir whose
    ``tokenizer_config.json`` names the EOS token) or ``train_tokenizer=VOCAB`` to train a
    byte-level BPE on the training documents first. An existing data dir is replaced only with
    ``overwrite``; text with more than ``max_bad_text`` of its characters not valid UTF-8 is
    refused (any at all is warned about). Returns the manifest.
    """
    files = _check_inputs(inputs)
    out = _check_prepare_args(out_dir, tokenizer, train_tokenizer, val_fraction, overwrite)

    def documents(stats: TextStats) -> Iterator[tuple[int, str]]:
        return enumerate(iter_documents(files, doc_separator, stats, text_field))

    if train_tokenizer:
        train_docs = (doc for i, doc in documents(TextStats()) if not is_validation_doc(i, val_fraction, seed))
        tok = train_bpe_tokenizer(train_docs, train_tokenizer, eos_token or EOS_CANDIDATES[0], progress)
    else:
        tok, eos_token = _load_tokenizer(tokenizer, eos_token)
    eos_name, eos_id = find_eos(tok, eos_token)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    stats = TextStats()  # counted on the pass that writes the tokens
    docs = ((("val" if is_validation_doc(i, val_fraction, seed) else "train"), doc) for i, doc in documents(stats))
    total_bytes = sum(_size(p) for p in files)
    counts, max_id = _write_splits(out, tok, docs, eos_id, token_dtype(vocab_size), total_bytes, progress, batch_docs)
    _check_text_quality(stats, max_bad_text, out)
    if counts["train"][0] == 0 or counts["val"][0] == 0:
        raise DataError(
            f"the split left {counts['train'][1]} training and {counts['val'][1]} validation documents; "
            "give more documents (or a .txt --doc-separator) or change --val-fraction"
        )
    for name in ("train", "val"):
        os.replace(out / f"{name}.bin.tmp", out / f"{name}.bin")
    tok.save(str(out / "tokenizer.json"))
    manifest = {
        "format": FORMAT,
        "dtype": token_dtype(vocab_size).name,
        "vocab_size": vocab_size,
        "eos_token": eos_name,
        "eos_id": eos_id,
        "max_token_id": max_id,
        "train_tokens": counts["train"][0],
        "val_tokens": counts["val"][0],
        "train_documents": counts["train"][1],
        "val_documents": counts["val"][1],
        "val_fraction": val_fraction,
        "seed": seed,
        "tokenizer_sha256": sha256_file(out / "tokenizer.json"),
        "train_sha256": sha256_file(out / "train.bin"),
        "val_sha256": sha256_file(out / "val.bin"),
        "replaced_characters": stats.replaced,
        "text_field": text_field,
        "sources": [{"path": str(p.resolve()), "bytes": _size(p)} for p in files],
    }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _check_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Return the input files (directories and globs expanded), refusing a missing one before anything is written."""
    if not inputs:
        raise DataError("give at least one input file")
    files = expand_inputs(inputs)
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        more = f" ({len(missing)} inputs missing)" if len(missing) > 1 else ""
        raise DataError(f"input {missing[0]} does not exist or is not a file{more}")
    return files


def _check_prepare_args(out_dir, tokenizer, train_tokenizer, val_fraction: float, overwrite: bool) -> Path:
    """Refuse what cannot work before anything is written; return the (created) output dir."""
    if (tokenizer is None) == (not train_tokenizer):
        raise DataError("give exactly one of --tokenizer FILE or --train-tokenizer VOCAB_SIZE")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1); got {val_fraction}")
    out = Path(out_dir)
    if (out / MANIFEST).is_file() and not overwrite:
        raise DataError(f"{out} already holds prepared data that runs may depend on; choose a new --out "
                        "(or pass --overwrite to replace it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").write_bytes(b"")
        (out / ".write-test").unlink()
    except OSError as e:
        raise DataError(f"cannot write to {out}: {e.strerror}; choose another --out") from None
    return out


def _check_text_quality(stats: TextStats, max_bad_text: float, out: Path) -> None:
    """Warn about text that was not valid UTF-8; refuse it past ``max_bad_text`` of the characters."""
    if stats.replaced == 0:
        return
    share = stats.replaced / max(stats.chars, 1)
    if share > max_bad_text:
        for name in ("train", "val"):
            (out / f"{name}.bin.tmp").unlink(missing_ok=True)
        raise DataError(f"{stats.replaced:,} of {stats.chars:,} characters ({share:.2%}) were not valid UTF-8: the "
                        "input is binary or in another encoding; convert it to UTF-8, or raise --max-bad-text "
                        f"(now {max_bad_text}) to accept it with U+FFFD in their place")
    warnings.warn(f"{stats.replaced:,} characters ({share:.4%}) were not valid UTF-8 and became U+FFFD", stacklevel=3)


def _load_tokenizer(path: str | Path, eos_token: str | None) -> tuple[object, str | None]:
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


def _write_splits(out: Path, tok, docs: Iterable[tuple[str, str]], eos_id: int, dtype: np.dtype, total_bytes: int,
                  progress: bool, batch_docs: int) -> tuple[dict[str, list[int]], int]:
    """Encode ``(split, document)`` pairs in batches into ``train.bin`` / ``val.bin``, each document
    followed by EOS; return ``({split: [tokens, documents]}, largest token id)``."""
    from tqdm import tqdm

    counts = {"train": [0, 0], "val": [0, 0]}  # tokens, documents
    max_id = 0
    files = {name: open(out / f"{name}.bin.tmp", "wb") for name in ("train", "val")}
    try:
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress)
        pending: list[tuple[str, str]] = []

        def flush():
            nonlocal max_id
            encs = tok.encode_batch([d for _, d in pending])
            for (name, doc), enc in zip(pending, encs):
                ids = np.asarray(enc.ids + [eos_id], dtype=np.int64)
                max_id = max(max_id, int(ids.max()))
                ids.astype(dtype).tofile(files[name])
                counts[name][0] += ids.size
                counts[name][1] += 1
                bar.update(len(doc.encode("utf-8", errors="replace")))
            pending.clear()

        for item in docs:
            pending.append(item)
            if len(pending) >= batch_docs:
                flush()
        flush()
        bar.close()
    finally:
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
    return counts, max_id


# ----------------------------------------------------------------------------------------------
# Reading prepared data
# ----------------------------------------------------------------------------------------------


class TokenData:
    """A prepared data dir: memory-mapped train/val tokens checked against the manifest.

    Opening costs O(1) in the size of the data: file sizes against the manifest's token counts,
    the manifest's largest id (checked when the tokens were written) against the vocabulary, and
    the tokenizer's hash. ``verify()`` (``tstrain verify-data``) reads every token.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not self.path.is_dir():
            raise DataError(f"data dir {self.path} does not exist; "
                            f"create it with `tstrain prepare-data --out {self.path} ...`")
        if not mpath.is_file():
            raise DataError(f"{self.path} has no {MANIFEST}; "
                            "it is not a prepared data dir (run `tstrain prepare-data`)")
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{mpath} is not valid JSON ({e}); re-run `tstrain prepare-data`") from None
        if self.manifest.get("format") != FORMAT:
            raise DataError(f"{mpath} has format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self._check_tokenizer()
        self.vocab_size = int(self.manifest["vocab_size"])
        self.eos_id = int(self.manifest["eos_id"])
        dtype = np.dtype(self.manifest["dtype"])
        self.train = self._open("train", dtype)
        self.val = self._open("val", dtype)

    def _check_tokenizer(self) -> None:
        """Refuse a tokenizer.json that is not the one the tokens were made with."""
        tok = self.path / "tokenizer.json"
        if not tok.is_file():
            raise DataError(f"{tok} is missing: the data cannot be decoded or exported without the tokenizer that "
                            "made it; restore it or re-run `tstrain prepare-data`")
        want = self.manifest.get("tokenizer_sha256")
        if want and sha256_file(tok) != want:
            raise DataError(f"{tok} is not the tokenizer these tokens were made with (its SHA-256 differs from the "
                            "manifest's): restore the original, or re-run `tstrain prepare-data` with the new one")

    @property
    def identity(self) -> dict[str, object]:
        """Return what identifies these data wherever the dir lives: the manifest's hash and token counts."""
        return {"manifest_sha256": sha256_file(self.path / MANIFEST), "train_tokens": len(self.train),
                "val_tokens": len(self.val), "tokenizer_sha256": self.manifest.get("tokenizer_sha256")}

    def _open(self, name: str, dtype: np.dtype) -> np.ndarray:
        f = self.path / f"{name}.bin"
        expected = int(self.manifest[f"{name}_tokens"])
        if not f.is_file():
            raise DataError(f"{f} is missing; re-run `tstrain prepare-data`")
        size = f.stat().st_size
        if size != expected * dtype.itemsize:
            raise DataError(
                f"{f} holds {size} bytes but the manifest promises {expected} {dtype.name} tokens "
                f"({expected * dtype.itemsize} bytes): the file is truncated or corrupt; re-run `tstrain prepare-data`"
            )
        top = int(self.manifest.get("max_token_id", self.vocab_size))
        if top >= self.vocab_size:
            raise DataError(f"{self.path / MANIFEST} records token id {top}, outside the tokenizer's vocabulary of "
                            f"{self.vocab_size}: the data were made with another tokenizer; "
                            "re-run `tstrain prepare-data`")
        return np.memmap(f, dtype=dtype, mode="r")

    def verify(self, chunk: int = 1 << 24) -> dict[str, int]:
        """Read every token: raise DataError for an id outside the vocabulary or a file whose hash is not
        the manifest's; return ``{split: largest id}``. Memory: one chunk of ``chunk`` tokens."""
        out = {}
        for name, tokens in (("train", self.train), ("val", self.val)):
            top = max((int(tokens[i:i + chunk].max()) for i in range(0, len(tokens), chunk)), default=0)
            if top >= self.vocab_size:
                raise DataError(
                    f"{self.path / f'{name}.bin'} contains token id {top}, outside the tokenizer's vocabulary of "
                    f"{self.vocab_size}: the file is corrupt or was made with another tokenizer; "
                    "re-run `tstrain prepare-data`"
                )
            want = self.manifest.get(f"{name}_sha256")
            if want and sha256_file(self.path / f"{name}.bin") != want:
                raise DataError(f"{self.path / f'{name}.bin'} does not match the SHA-256 in the manifest: it changed "
                                "after it was written (corrupt); re-run `tstrain prepare-data`")
            out[name] = top
        return out
