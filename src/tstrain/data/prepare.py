"""Text to token shards (``tstrain prepare-data``): in several processes, and resumable.

The input stream (every document of the inputs in order, ``text_sources``) is cut into *parts*,
contiguous runs of documents. Part ``k`` is written as ``train-0000k.bin`` and ``val-0000k.bin``
(its held-out documents: ``is_validation_doc`` decides from a document's index alone), and is
closed before a document that would take either file past ``shard_tokens`` tokens, so a shard
holds at most ``shard_tokens`` tokens unless one document alone is longer. The split and the
cuts depend on the documents only, never on the number of workers or the batches: any
``workers`` writes the same bytes.

Parallelism: this process reads the documents in order, hands batches of about ``batch_chars``
characters to ``workers`` spawned processes (each loads the tokenizer once and calls the
``tokenizers`` library's ``encode_batch``), reads at most ``IN_FLIGHT_CHARS`` a worker ahead of
the writing (so memory stays bounded whatever the corpus), and writes the results in the order
it sent them.
Inside a worker the library encodes on one thread (``TOKENIZERS_PARALLELISM=false``: no Rust
thread pool), so N workers use N cores instead of N pools of threads fighting for them. With
``workers=1`` the batches are encoded in this process, with the library's own threads.

Resume: each shard is written as ``.tmp``, synced and renamed; after each part,
``prepare-state.json`` records the parts done and the next document, with the settings that
decide the tokens (inputs and their sizes, tokenizer, EOS, split, text field, separator, shard
size). The same command on a dir with an unfinished preparation reads but does not tokenize the
documents done and goes on with the next part; the files come out bit-identical to an
uninterrupted run's. Other settings are refused, naming what differs. A trained tokenizer is
saved before any token is written, so a resumed run uses it instead of training another.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import faults
from ..errors import DataError
from ..fileio import sha256_file, write_text_atomic
from ..run_lock import locked
from .text_sources import TextStats, expand_inputs, iter_documents
from .tokens import FORMAT, MANIFEST, SPLITS, shard_name

STATE = "prepare-state.json"
STATE_FORMAT = "tstrain-prepare-state-v1"
SHARD_TOKENS = 1 << 29  # the default shard: 1.07 GB of uint16 ids (2.1 GB of uint32)
BATCH_CHARS = 1 << 20  # text per batch sent to a worker: large enough to amortise the hand-over
IN_FLIGHT_CHARS = 16 << 20  # text per worker read ahead of the writing (see _encoded)
TOKEN_FILE = re.compile(r"(train|val)(-\d+)?\.bin(\.tmp)?")
MAX_TRAINED_VOCAB = 1 << 21  # the BPE trainer allocates tables of the vocabulary's size up front
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


# ----------------------------------------------------------------------------------------------
# The split and the tokenizer
# ----------------------------------------------------------------------------------------------


def is_validation_doc(index: int, val_fraction: float, seed: int) -> bool:
    """Return whether document ``index`` is held out: a fixed hash, so re-runs split the same way."""
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


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


# ----------------------------------------------------------------------------------------------
# prepare-data
# ----------------------------------------------------------------------------------------------


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
    overwrite: bool = False,
    max_bad_text: float = 0.001,
    text_field: str = "text",
    workers: int = 1,
    shard_tokens: int = SHARD_TOKENS,
    batch_chars: int = BATCH_CHARS,
    on_part: Callable[[int], None] | None = None,
) -> dict:
    """Tokenize ``inputs`` into shards in ``out_dir`` (see the module docstring); return the manifest.

    ``inputs`` are files, directories or globs (``text_sources``); the text is in ``text_field``.
    Give an existing ``tokenizer`` (a tokenizer.json, or a Hugging Face tokenizer dir whose
    ``tokenizer_config.json`` names the EOS token) or ``train_tokenizer=VOCAB`` to train a
    byte-level BPE on the training documents first. A finished data dir is replaced only with
    ``overwrite``; an unfinished one with the same settings is resumed. Text with more than
    ``max_bad_text`` of its characters not valid UTF-8 is refused (any at all is warned about).
    ``workers > 1`` starts spawned processes, which re-import the calling script: call it from under
    ``if __name__ == "__main__":`` in a script. ``on_part(k)`` is called after part ``k`` is
    recorded (a seam for tests).
    """
    files = _check_inputs(inputs)
    _check_numbers(tokenizer, train_tokenizer, val_fraction, workers, shard_tokens, max_bad_text)
    tok = None
    if not train_tokenizer:
        tok, eos_token = _load_tokenizer(tokenizer, eos_token)
        find_eos(tok, eos_token)  # refuse a tokenizer without EOS before anything is written
    settings = {"sources": [{"path": str(p.resolve()), "bytes": _size(p)} for p in files],
                "tokenizer": f"trained, vocabulary {train_tokenizer}" if train_tokenizer else _tokenizer_sha(tok),
                "eos_token": eos_token, "val_fraction": val_fraction, "seed": seed, "text_field": text_field,
                "doc_separator": doc_separator, "shard_tokens": shard_tokens}
    _refuse_finished(Path(out_dir), overwrite)
    with locked(out_dir, "data dir") as out, _removed_on_failure(out):
        _refuse_finished(out, overwrite)  # again under the lock: another process may have finished it
        _check_writable(out)
        state = _resumable_state(out, settings, overwrite)
        if state is None:
            if train_tokenizer:
                train_docs = (doc for i, doc in enumerate(iter_documents(files, doc_separator, TextStats(), text_field))
                              if not is_validation_doc(i, val_fraction, seed))
                tok = train_bpe_tokenizer(train_docs, train_tokenizer, eos_token or EOS_CANDIDATES[0], progress)
            tok.save(str(out / "tokenizer.json"))
            state = {"format": STATE_FORMAT, "settings": settings,
                     "tokenizer_sha256": sha256_file(out / "tokenizer.json"),
                     "dtype": token_dtype(tok.get_vocab_size(with_added_tokens=True)).name, "parts": [],
                     "next_document": 0}
            write_text_atomic(out / STATE, json.dumps(state, indent=1) + "\n")
        tok, _ = _load_tokenizer(out / "tokenizer.json", None)  # the saved file: what every worker loads
        eos_name, eos_id = find_eos(tok, eos_token)
        vocab_size = tok.get_vocab_size(with_added_tokens=True)
        job = _Job(str(out / "tokenizer.json"), eos_id, state["dtype"], val_fraction, seed)
        stats = TextStats()  # counted on the pass that writes the tokens (documents skipped on resume included)
        docs = iter_documents(files, doc_separator, stats, text_field)
        _tokenize(out, state, docs, job, workers, batch_chars, progress, on_part)
        _hold_out_tail(out, state, val_fraction)
        manifest = _manifest(state, vocab_size, (eos_name, eos_id), stats.replaced)
        _check_result(out, manifest, stats, max_bad_text)
        write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        (out / STATE).unlink()
        return manifest


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _tokenizer_sha(tok) -> str:
    """Return the SHA-256 of a tokenizer's canonical serialization (not of its file's formatting)."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


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


def _check_numbers(tokenizer, train_tokenizer: int, val_fraction: float, workers: int, shard_tokens: int,
                   max_bad_text: float) -> None:
    """Refuse settings that cannot work, before anything is written."""
    if (tokenizer is None) == (not train_tokenizer):
        raise DataError("give exactly one of --tokenizer FILE or --train-tokenizer VOCAB_SIZE")
    if train_tokenizer > MAX_TRAINED_VOCAB:
        raise DataError(f"--train-tokenizer {train_tokenizer:,} is past the largest vocabulary tstrain trains "
                        f"({MAX_TRAINED_VOCAB:,}): vocabularies in use are 32K-256K")
    if not 0.0 <= max_bad_text <= 1.0:  # also false for nan
        raise DataError(f"--max-bad-text is a share of the characters, in [0, 1]; got {max_bad_text}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1); got {val_fraction}")
    if not isinstance(workers, int) or workers < 1:
        raise DataError(f"--workers must be a whole number of processes, at least 1; got {workers}")
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise DataError(f"--shard-tokens must be a whole number of tokens, at least 1; got {shard_tokens}")


def _refuse_finished(out: Path, overwrite: bool) -> None:
    """Refuse to replace finished data unasked (checked again under the dir's lock)."""
    if (out / MANIFEST).is_file() and not overwrite:
        raise DataError(f"{out} already holds prepared data that runs may depend on; choose a new --out "
                        "(or pass --overwrite to replace it)")


def _check_writable(out: Path) -> None:
    try:
        (out / ".write-test").write_bytes(b"")
        (out / ".write-test").unlink()
    except OSError as e:
        raise DataError(f"cannot write to {out}: {e.strerror}; choose another --out") from None


@contextlib.contextmanager
def _removed_on_failure(out: Path) -> Iterator[None]:
    """On a failure before any part was finished, remove what this preparation wrote (there is nothing to
    resume), so a refused input leaves no half-made data dir; finished parts are kept for the rerun."""
    try:
        yield
    except BaseException:
        state = _read_state(out) if (out / STATE).is_file() else {}
        if not state.get("parts") and not (out / MANIFEST).is_file():
            _clear(out)
            (out / "tokenizer.json").unlink(missing_ok=True)
        raise


def _token_files(out: Path) -> list[Path]:
    """Return the token files in ``out``: shards, their temporaries, a v1 dir's pair."""
    return [f for f in out.iterdir() if TOKEN_FILE.fullmatch(f.name)]


def _clear(out: Path, keep: set[str] = frozenset()) -> None:
    """Remove what an earlier preparation left in ``out`` except the files in ``keep``: the manifest
    first (so no manifest ever lists missing files), then the token files and the progress file."""
    if not keep:
        (out / MANIFEST).unlink(missing_ok=True)
        (out / STATE).unlink(missing_ok=True)
    for f in _token_files(out):
        if f.name not in keep:
            f.unlink()


def _read_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE).read_text())
    except json.JSONDecodeError:
        raise DataError(f"{out / STATE} is not valid JSON (edited by hand?); pass --overwrite to start over") from None


def _resumable_state(out: Path, settings: dict, overwrite: bool) -> dict | None:
    """Return the progress of an unfinished preparation of ``out`` with these settings, or None after
    clearing ``out`` for a new one; refuse one with other settings that finished a part (--overwrite
    starts over)."""
    state = _read_state(out) if (out / STATE).is_file() and not overwrite else None
    if state is None or not state.get("parts"):  # nothing finished: nothing to resume
        _clear(out)
        return None
    was = state.get("settings", {})
    flags = {"sources": "--input (the files or their sizes)", "tokenizer": "the tokenizer", "eos_token": "--eos-token",
             "val_fraction": "--val-fraction", "seed": "--seed", "text_field": "--text-field",
             "doc_separator": "--doc-separator", "shard_tokens": "--shard-tokens"}
    diffs = [flag if key in ("sources", "tokenizer") else f"{flag} {was.get(key)!r} then, {settings[key]!r} now"
             for key, flag in flags.items() if was.get(key) != settings[key]]
    if state.get("format") != STATE_FORMAT or diffs:
        raise DataError(f"{out} holds an unfinished preparation with other settings ({'; '.join(diffs) or 'format'}): "
                        "run it again with its own settings to resume it, or pass --overwrite to start over")
    tok_file = out / "tokenizer.json"
    if not tok_file.is_file() or sha256_file(tok_file) != state["tokenizer_sha256"]:
        raise DataError(f"{tok_file} is missing or changed since the preparation started; "
                        "pass --overwrite to start over")
    listed = {p[s]["file"]: p[s]["tokens"] for p in state["parts"] for s in SPLITS if p[s]}
    itemsize = np.dtype(state["dtype"]).itemsize
    for name, tokens in listed.items():
        if not (out / name).is_file() or (out / name).stat().st_size != tokens * itemsize:
            raise DataError(f"{out / name} of the unfinished preparation is missing or damaged; "
                            "pass --overwrite to start over")
    _clear(out, keep=set(listed))
    print(f"resuming the preparation of {out} at part {len(state['parts'])}: "
          f"{state['next_document']:,} documents done")
    return state


# ----------------------------------------------------------------------------------------------
# Encoding batches (in this process or in workers)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What encoding a batch needs: the saved tokenizer, EOS, the output dtype and the split's settings."""

    tokenizer_file: str
    eos_id: int
    dtype: str
    val_fraction: float
    seed: int


class _Encoded(NamedTuple):
    """A batch of documents, encoded: what this process writes."""

    tokens: np.ndarray  # every document's ids and its EOS, end to end, in the output dtype
    offsets: np.ndarray  # (documents + 1,) int64: document i is tokens[offsets[i]:offsets[i + 1]]
    tops: np.ndarray  # (documents,) the largest id of each document
    is_val: np.ndarray  # (documents,) bool: held out
    text_bytes: int  # UTF-8 bytes of the batch's text (the progress bar's unit)
    eos_inside: np.ndarray  # (documents,) how often the EOS token's text occurs inside each document


class _Encoder:
    """Encodes batches with the ``tokenizers`` library's own batch encoding; one per process."""

    def __init__(self, job: _Job):
        from tokenizers import Tokenizer

        self.job = job
        self.tokenizer = Tokenizer.from_file(job.tokenizer_file)
        self.dtype = np.dtype(job.dtype)

    def __call__(self, first: int, docs: list[str]) -> _Encoded:
        """Return documents ``first, first + 1, ...`` (``docs``) encoded, each followed by EOS."""
        ids = [e.ids for e in self.tokenizer.encode_batch(docs)]
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, ids), np.int64, len(ids)) + 1, out=offsets[1:])
        tokens = np.empty(offsets[-1], self.dtype)
        for doc, start in zip(ids, offsets.tolist()):
            tokens[start : start + len(doc)] = doc  # an id past the dtype raises instead of wrapping
        tokens[offsets[1:] - 1] = self.job.eos_id
        is_val = [is_validation_doc(first + i, self.job.val_fraction, self.job.seed) for i in range(len(docs))]
        eos_inside = np.add.reduceat((tokens == self.job.eos_id).astype(np.int64), offsets[:-1]) - 1
        return _Encoded(tokens, offsets, np.maximum.reduceat(tokens, offsets[:-1]), np.array(is_val, dtype=bool),
                        sum(len(d.encode("utf-8", errors="replace")) for d in docs), eos_inside)


_WORKER: _Encoder | None = None  # a pool process's encoder, made once by _start_worker


def _start_worker(job: _Job) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before the first encoding: one thread, one core per worker
    _WORKER = _Encoder(job)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """Exit once the parent is gone: a killed parent shuts no pool down, and a pool process holds both ends
    of its task queue, so it would otherwise wait for work forever (holding the parent's stdout open)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _encode_in_worker(first: int, docs: list[str]) -> _Encoded:
    return _WORKER(first, docs)


def _batches(docs: Iterator[str], first: int, batch_chars: int) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(index of the first document, documents)`` batches of about ``batch_chars`` characters."""
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= batch_chars:
            yield first, batch
            first, batch, size = first + len(batch), [], 0
    if batch:
        yield first, batch


def _encoded(batches: Iterator[tuple[int, list[str]]], job: _Job, workers: int) -> Iterator[_Encoded]:
    """Yield each batch encoded, in order: here for one worker, else by a pool of spawned processes.

    The results are written in input order, so a batch that takes long (one huge document) holds
    up the writing of those after it; the others go on being encoded as long as less than
    ``IN_FLIGHT_CHARS`` of text a worker (or two batches a worker) waits, which bounds the memory.
    """
    if workers == 1:
        encode = _Encoder(job)
        yield from (encode(first, docs) for first, docs in batches)
        return
    # spawn, not fork: a forked child of a process whose tokenizer already ran its threads can hang
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _start_worker, (job,))
    try:
        pending: deque = deque()  # (future, characters), in input order
        waiting = 0
        for first, docs in batches:
            pending.append((pool.submit(_encode_in_worker, first, docs), sum(map(len, docs))))
            waiting += pending[-1][1]
            while len(pending) > 2 * workers and waiting > workers * IN_FLIGHT_CHARS:
                future, size = pending.popleft()
                waiting -= size
                yield future.result()
        while pending:
            yield pending.popleft()[0].result()
    except BrokenProcessPool:
        raise DataError("a tokenizing process died (out of memory or killed; from a Python script, call "
                        "prepare_data under `if __name__ == '__main__':`); the finished parts are kept: "
                        "run the same command again to resume") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# Writing parts
# ----------------------------------------------------------------------------------------------


class _ShardWriter:
    """One token file being written: under a ``.tmp`` name, hashed as it is written, renamed when closed."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.file = None
        self.sha = hashlib.sha256()
        self.tokens = self.documents = self.top = 0

    def write(self, ids: np.ndarray, documents: int, top: int) -> None:
        if self.file is None:
            self.file = open(self.tmp, "wb")
        self.file.write(ids.data)
        self.sha.update(ids.data)
        self.tokens += ids.size
        self.documents += documents
        self.top = max(self.top, top)

    def close(self) -> dict | None:
        """Return the shard's manifest entry once it is on disk under its name (None: nothing written)."""
        if self.file is None:
            return None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "tokens": self.tokens, "documents": self.documents,
                "sha256": self.sha.hexdigest(), "max_token_id": self.top}

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()


class _Part:
    """Part ``index`` being written: documents ``first, first + 1, ...``, each split in its own shard."""

    def __init__(self, out: Path, index: int, first: int):
        self.index, self.first, self.end = index, first, first
        self.eos_in_text = 0  # EOS tokens inside the documents' text (each ends a document there)
        self.shards = {split: _ShardWriter(out / shard_name(split, index)) for split in SPLITS}

    def fitting(self, batch: _Encoded, start: int, limit: int) -> int:
        """Return how many of the batch's documents from ``start`` on fit: each, unless it would take its
        split's shard past ``limit`` tokens (an empty shard takes any document)."""
        lengths, is_val = np.diff(batch.offsets[start:]), batch.is_val[start:]
        over = np.zeros(len(lengths), dtype=bool)
        for split, mine in (("train", ~is_val), ("val", is_val)):
            after = self.shards[split].tokens + np.cumsum(np.where(mine, lengths, 0))
            over |= mine & (after > limit) & (after - lengths > 0)
        return int(np.argmax(over)) if over.any() else len(lengths)

    def add(self, batch: _Encoded, a: int, b: int) -> None:
        """Append the batch's documents ``a..b-1`` to their splits' shards."""
        tokens, is_val = batch.tokens[batch.offsets[a] : batch.offsets[b]], batch.is_val[a:b]
        for split, mine in (("train", ~is_val), ("val", is_val)):
            if mine.any():
                ids = tokens if mine.all() else tokens[np.repeat(mine, np.diff(batch.offsets[a : b + 1]))]
                self.shards[split].write(ids, int(mine.sum()), int(batch.tops[a:b][mine].max()))
        self.end += b - a
        self.eos_in_text += int(batch.eos_inside[a:b].sum())


def _tokenize(out: Path, state: dict, docs: Iterator[str], job: _Job, workers: int, batch_chars: int,
              progress: bool, on_part: Callable[[int], None] | None) -> None:
    """Write the documents past ``state``'s into parts, recording each closed part in ``state``."""
    from tqdm import tqdm

    bar = tqdm(total=sum(s["bytes"] for s in state["settings"]["sources"]), unit="B", unit_scale=True,
               desc="tokenizing", disable=not progress)
    done, skipped = state["next_document"], 0
    for doc in itertools.islice(docs, done):  # read (the text statistics count them) but not tokenized
        bar.update(len(doc.encode("utf-8", errors="replace")))
        skipped += 1
    if skipped < done:
        raise DataError(f"the inputs hold {skipped} documents, fewer than the {done} the unfinished preparation "
                        f"of {out} wrote: they changed; pass --overwrite to start over")
    part = _Part(out, len(state["parts"]), done)
    try:
        with closing(_encoded(_batches(docs, done, batch_chars), job, workers)) as results:
            for batch in results:
                bar.update(batch.text_bytes)
                start = 0
                while start < len(batch.is_val):
                    end = start + part.fitting(batch, start, state["settings"]["shard_tokens"])
                    part.add(batch, start, end)
                    if end < len(batch.is_val):
                        _record_part(out, state, part, on_part)
                        part = _Part(out, part.index + 1, part.end)
                    start = end
        if part.end > part.first:
            _record_part(out, state, part, on_part)
    finally:
        for shard in part.shards.values():
            shard.abandon()
        bar.close()


def _record_part(out: Path, state: dict, part: _Part, on_part: Callable[[int], None] | None) -> None:
    """Close a part's shards and record it as done in the progress file."""
    record = {"first_document": part.first, "end_document": part.end, "eos_in_text": part.eos_in_text}
    record.update({split: shard.close() for split, shard in part.shards.items()})
    faults.maybe_die("prepare", part.index)  # its files are in place but the progress file does not list them
    state["parts"].append(record)
    state["next_document"] = part.end
    write_text_atomic(out / STATE, json.dumps(state, indent=1) + "\n")
    if on_part is not None:
        on_part(part.index)


def _hold_out_tail(out: Path, state: dict, val_fraction: float) -> None:
    """When the split by document left one side empty (too few documents, such as one big .txt), make the
    validation split of the last ``val_fraction`` of the token stream instead, and say so.

    The held-out tail is cut from the last training shards (a document may be cut in two); each part's
    ``val`` file takes the tail of its ``train`` file. ``state["val_from_tail"]`` records the tokens moved.
    """
    parts = [p for p in state["parts"] if p["train"] or p["val"]]
    if all(p["train"] is None for p in parts):  # every document was held out: they train instead
        for p in parts:
            if p["val"]:
                name = p["val"]["file"].replace("val", "train", 1)
                os.replace(out / p["val"]["file"], out / name)
                p["train"], p["val"] = {**p["val"], "file": name}, None
    total = sum(p["train"]["tokens"] for p in parts if p["train"])
    if any(p["val"] for p in parts) or total < 2:
        return
    need = min(max(1, round(val_fraction * total)), total - 1)
    state["val_from_tail"] = need
    dtype = np.dtype(state["dtype"])
    for p in reversed(parts):
        if need == 0:
            break
        shard = p["train"]
        ids = np.memmap(out / shard["file"], dtype=dtype, mode="r")
        take = min(need, ids.size)
        p["val"] = _rewrite(out / shard["file"].replace("train", "val", 1), ids[ids.size - take :], 1)
        p["train"] = _rewrite(out / shard["file"], ids[: ids.size - take], shard["documents"]) if take < ids.size \
            else None
        if p["train"] is None:
            (out / shard["file"]).unlink()
        need -= take
    documents = sum(p["end_document"] - p["first_document"] for p in state["parts"])
    print(f"{documents} document{'s' if documents != 1 else ''} too few to hold any out whole: the validation split "
          f"is the last {state['val_from_tail']:,} tokens ({val_fraction:g}) of the token stream instead")


def _rewrite(path: Path, ids: np.ndarray, documents: int) -> dict:
    """Write ``ids`` as the shard ``path`` (through a temporary file and a rename); return its manifest entry."""
    writer = _ShardWriter(path)
    writer.write(np.ascontiguousarray(ids), documents, int(ids.max()))
    return writer.close()


# ----------------------------------------------------------------------------------------------
# The manifest
# ----------------------------------------------------------------------------------------------


def _manifest(state: dict, vocab_size: int, eos: tuple[str, int], replaced: int) -> dict:
    """Return the manifest of a finished preparation: totals, settings and every shard."""
    settings = state["settings"]
    shards = {split: [p[split] for p in state["parts"] if p[split]] for split in SPLITS}
    total = {f"{split}_{key}": sum(s[key] for s in shards[split])
             for split in SPLITS for key in ("tokens", "documents")}
    return {
        "format": FORMAT,
        "dtype": state["dtype"],
        "vocab_size": vocab_size,
        "eos_token": eos[0],
        "eos_id": eos[1],
        "max_token_id": max((s["max_token_id"] for split in SPLITS for s in shards[split]), default=0),
        "train_tokens": total["train_tokens"],
        "val_tokens": total["val_tokens"],
        "train_documents": total["train_documents"],
        "val_documents": total["val_documents"],
        "val_fraction": settings["val_fraction"],
        "seed": settings["seed"],
        "tokenizer_sha256": state["tokenizer_sha256"],
        "replaced_characters": replaced,
        "val_from_tail": state.get("val_from_tail", 0),
        "eos_in_text": sum(p.get("eos_in_text", 0) for p in state["parts"]),
        "text_field": settings["text_field"],
        "doc_separator": settings["doc_separator"],
        "shard_tokens": settings["shard_tokens"],
        "sources": settings["sources"],
        "shards": shards,
    }


def _check_result(out: Path, manifest: dict, stats: TextStats, max_bad_text: float) -> None:
    """Refuse (and remove) data from text that was not UTF-8 past ``max_bad_text`` of its characters, or
    with an empty split; warn about any text that was not UTF-8."""
    share = stats.replaced / max(stats.chars, 1)
    if share > max_bad_text:
        _clear(out)
        (out / "tokenizer.json").unlink(missing_ok=True)
        raise DataError(f"{stats.replaced:,} of {stats.chars:,} characters ({share:.2%}) were not valid UTF-8: the "
                        "input is binary or in another encoding; convert it to UTF-8, or raise --max-bad-text "
                        f"(now {max_bad_text}) to accept it with U+FFFD in their place")
    if manifest["train_tokens"] == 0 or manifest["val_tokens"] == 0:
        _clear(out)
        (out / "tokenizer.json").unlink(missing_ok=True)
        raise DataError(
            f"the split left {manifest['train_documents']} training and {manifest['val_documents']} validation "
            "documents; give more documents (or a .txt --doc-separator) or change --val-fraction"
        )
    if stats.replaced:
        warnings.warn(f"{stats.replaced:,} characters ({share:.4%}) were not valid UTF-8 and became U+FFFD",
                      stacklevel=3)
    separator = manifest["doc_separator"]
    if separator and stats.text_files and not stats.separated_files:
        warnings.warn(f"--doc-separator {separator!r} occurs in none of the {stats.text_files} text inputs, so each "
                      "is one document; check the separator (on a command line \\n is a newline)", stacklevel=3)
    if manifest["eos_in_text"]:
        warnings.warn(f"the text holds the EOS token's text {manifest['eos_token']!r} {manifest['eos_in_text']:,} "
                      "times, and each became an end of document there; remove it from the text (or name another "
                      "--eos-token) if it is not meant as one", stacklevel=3)
