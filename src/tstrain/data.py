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

MANIFEST = "manifest.json"
FORMAT = "tstrain-tokens-v1"
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


# ----------------------------------------------------------------------------------------------
# Reading text sources
# ----------------------------------------------------------------------------------------------


class TextStats:
    """Characters read and characters that were not valid UTF-8 (decoded as U+FFFD)."""

    def __init__(self) -> None:
        self.chars = 0
        self.replaced = 0

    def decode(self, raw: bytes) -> str:
        """Return ``raw`` decoded as UTF-8, counting the bytes that were not valid UTF-8."""
        text = raw.decode("utf-8", errors="replace")
        self.chars += len(text)
        self.replaced += text.count("\ufffd") - raw.count("\ufffd".encode())  # U+FFFD already in the file is text
        return text


def _txt_documents(p: Path, doc_separator: str | None, stats: TextStats) -> Iterator[str]:
    text = stats.decode(p.read_bytes()).replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it
    if "\x00" in text:
        raise DataError(f"{p} holds NUL bytes: it is a binary file, not text; leave it out of --input")
    parts = text.split(doc_separator) if doc_separator else [text]
    yield from (t for t in parts if t.strip())


def _jsonl_documents(p: Path, stats: TextStats) -> Iterator[str]:
    with p.open("rb") as f:
        for n, raw in enumerate(f, 1):
            line = stats.decode(raw)
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{p}:{n} is not a JSON object with a 'text' field") from None
            if text is not None and not isinstance(text, str):
                raise DataError(f"{p}:{n}: 'text' is a {type(text).__name__}, not a string")
            if text and text.strip():
                yield text


def _parquet_documents(p: Path) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{p} is not a readable parquet file ({e})") from None
    schema = pf.schema_arrow
    if "text" not in schema.names:
        raise DataError(f"{p} has no 'text' column (columns: {', '.join(schema.names)})")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{p}: the 'text' column holds {kind}, not strings")
    try:
        for batch in pf.iter_batches(columns=["text"], batch_size=1024):
            yield from (t for t in batch.column(0).to_pylist() if t and t.strip())
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{p} is corrupt: {e}") from None


def iter_documents(paths: Sequence[str | Path], doc_separator: str | None = None,
                   stats: TextStats | None = None) -> Iterator[str]:
    """Yield documents: a .txt file (split on ``doc_separator`` if given), .jsonl lines' or
    .parquet rows' ``text`` field. Empty documents are skipped; bytes that are not UTF-8 become
    U+FFFD and are counted in ``stats``."""
    stats = stats or TextStats()
    for p in map(Path, paths):
        if not p.is_file():
            raise DataError(f"input {p} does not exist or is not a file")
        suffix = p.suffix.lower()
        if suffix in (".txt", ".md", ".rst", ".text"):
            yield from _txt_documents(p, doc_separator, stats)
        elif suffix in (".jsonl", ".json"):
            yield from _jsonl_documents(p, stats)
        elif suffix == ".parquet":
            yield from _parquet_documents(p)
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
    overwrite: bool = False,
    max_bad_text: float = 0.001,
) -> dict:
    """Tokenize ``inputs`` into ``out_dir`` (train.bin, val.bin, tokenizer.json, manifest.json).

    Give an existing ``tokenizer`` (a tokenizer.json) or ``train_tokenizer=VOCAB`` to train a
    byte-level BPE on the training documents first. An existing data dir is replaced only with
    ``overwrite``; text with more than ``max_bad_text`` of its characters not valid UTF-8 is
    refused (any at all is warned about). Returns the manifest.
    """
    out = _check_prepare_args(inputs, out_dir, tokenizer, train_tokenizer, val_fraction, overwrite)

    def documents(stats: TextStats) -> Iterator[tuple[int, str]]:
        return enumerate(iter_documents(inputs, doc_separator, stats))

    if train_tokenizer:
        train_docs = (doc for i, doc in documents(TextStats()) if not is_validation_doc(i, val_fraction, seed))
        tok = train_bpe_tokenizer(train_docs, train_tokenizer, eos_token or EOS_CANDIDATES[0], progress)
    else:
        tok = _load_tokenizer(tokenizer)
    eos_name, eos_id = find_eos(tok, eos_token)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    stats = TextStats()  # counted on the pass that writes the tokens
    docs = ((("val" if is_validation_doc(i, val_fraction, seed) else "train"), doc) for i, doc in documents(stats))
    total_bytes = sum(Path(p).stat().st_size for p in inputs)
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
        "sources": [{"path": str(Path(p).resolve()), "bytes": Path(p).stat().st_size} for p in inputs],
    }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _check_prepare_args(inputs, out_dir, tokenizer, train_tokenizer, val_fraction: float, overwrite: bool) -> Path:
    """Refuse what cannot work before anything is written; return the (created) output dir."""
    if not inputs:
        raise DataError("give at least one input file")
    if (tokenizer is None) == (not train_tokenizer):
        raise DataError("give exactly one of --tokenizer FILE or --train-tokenizer VOCAB_SIZE")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1); got {val_fraction}")
    missing = [str(p) for p in inputs if not Path(p).is_file()]
    if missing:
        more = f" ({len(missing)} inputs missing)" if len(missing) > 1 else ""
        raise DataError(f"input {missing[0]} does not exist or is not a file{more}")
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


def _load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise DataError(f"tokenizer file {path} does not exist")
    try:
        return Tokenizer.from_file(str(path))
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
