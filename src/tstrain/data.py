"""Tokenizing text into packed token files, and opening them.

On disk a prepared data dir holds ``train.bin`` and ``val.bin`` (raw uint16/uint32 token ids,
documents joined with EOS, read by memory map), ``tokenizer.json`` and ``manifest.json``. Which
windows of ``train.bin`` a run reads is the reader's business (``reader.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import DataError
from .fileio import sha256_file

MANIFEST = "manifest.json"
FORMAT = "tstrain-tokens-v1"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


# ----------------------------------------------------------------------------------------------
# Reading text sources
# ----------------------------------------------------------------------------------------------


def iter_documents(paths: Sequence[str | Path], doc_separator: str | None = None) -> Iterator[str]:
    """Yield documents: a .txt file (split on ``doc_separator`` if given), .jsonl lines' or
    .parquet rows' ``text`` field. Empty documents are skipped."""
    for p in map(Path, paths):
        if not p.is_file():
            raise DataError(f"input {p} does not exist or is not a file")
        suffix = p.suffix.lower()
        if suffix in (".txt", ".md", ".rst", ".text"):
            text = p.read_text(encoding="utf-8", errors="replace")
            parts = text.split(doc_separator) if doc_separator else [text]
            yield from (t for t in parts if t.strip())
        elif suffix in (".jsonl", ".json"):
            with p.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise DataError(f"{p}:{n} is not a JSON object with a 'text' field") from None
                    if isinstance(text, str) and text.strip():
                        yield text
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(p)
            if "text" not in pf.schema_arrow.names:
                raise DataError(f"{p} has no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
            for batch in pf.iter_batches(columns=["text"], batch_size=1024):
                yield from (t for t in batch.column(0).to_pylist() if t and t.strip())
        else:
            raise DataError(f"unsupported input {p}: use .txt, .jsonl (a 'text' field per line) "
                            "or .parquet ('text' column)")


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
) -> dict:
    """Tokenize ``inputs`` into ``out_dir`` (train.bin, val.bin, tokenizer.json, manifest.json).

    Give an existing ``tokenizer`` (a tokenizer.json) or ``train_tokenizer=VOCAB`` to train a
    byte-level BPE on the training documents first. Returns the manifest.
    """
    if not inputs:
        raise DataError("give at least one input file")
    if (tokenizer is None) == (not train_tokenizer):
        raise DataError("give exactly one of --tokenizer FILE or --train-tokenizer VOCAB_SIZE")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1); got {val_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def split_docs(want_val: bool) -> Iterator[str]:
        for i, doc in enumerate(iter_documents(inputs, doc_separator)):
            if is_validation_doc(i, val_fraction, seed) == want_val:
                yield doc

    if train_tokenizer:
        tok = train_bpe_tokenizer(split_docs(False), train_tokenizer, eos_token or EOS_CANDIDATES[0], progress)
    else:
        tok = _load_tokenizer(tokenizer)
    eos_name, eos_id = find_eos(tok, eos_token)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    tok.save(str(out / "tokenizer.json"))
    docs = ((("val" if is_validation_doc(i, val_fraction, seed) else "train"), doc)
            for i, doc in enumerate(iter_documents(inputs, doc_separator)))
    total_bytes = sum(Path(p).stat().st_size for p in inputs)
    counts, max_id = _write_splits(out, tok, docs, eos_id, token_dtype(vocab_size), total_bytes, progress, batch_docs)
    if counts["train"][0] == 0 or counts["val"][0] == 0:
        raise DataError(
            f"the split left {counts['train'][1]} training and {counts['val'][1]} validation documents; "
            "give more documents (or a .txt --doc-separator) or change --val-fraction"
        )
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
        "sources": [{"path": str(p), "bytes": Path(p).stat().st_size} for p in inputs],
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


def _load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise DataError(f"tokenizer file {path} does not exist")
    return Tokenizer.from_file(str(path))


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
    for name in ("train", "val"):
        os.replace(out / f"{name}.bin.tmp", out / f"{name}.bin")
    return counts, max_id


# ----------------------------------------------------------------------------------------------
# Reading prepared data
# ----------------------------------------------------------------------------------------------


class TokenData:
    """A prepared data dir: memory-mapped train/val tokens checked against the manifest."""

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
        self.vocab_size = int(self.manifest["vocab_size"])
        self.eos_id = int(self.manifest["eos_id"])
        dtype = np.dtype(self.manifest["dtype"])
        self.train = self._open("train", dtype)
        self.val = self._open("val", dtype)

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
        tokens = np.memmap(f, dtype=dtype, mode="r")
        top = int(tokens.max()) if tokens.size else 0
        if top >= self.vocab_size:
            raise DataError(
                f"{f} contains token id {top}, outside the tokenizer's vocabulary of {self.vocab_size}: "
                "the file is corrupt or was made with another tokenizer; re-run `tstrain prepare-data`"
            )
        return tokens
