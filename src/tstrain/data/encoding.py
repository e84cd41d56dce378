"""Documents to token ids, in batches, in this process or in spawned worker processes, in order.

The writer reads the documents in order and hands batches of about ``batch_chars`` characters to
``workers`` spawned processes (each loads the tokenizer once and calls the ``tokenizers`` library's
``encode_batch``); it reads at most ``IN_FLIGHT_CHARS`` a worker ahead of the writing (so memory
stays bounded whatever the corpus) and gets the results back in the order it sent them. Inside a
worker the library encodes on one thread (``TOKENIZERS_PARALLELISM=false``: no Rust thread pool),
so N workers use N cores instead of N pools of threads fighting for them. With ``workers=1`` the
batches are encoded in the calling process, with the library's own threads. Each document is held
out for validation or not from its index alone (``is_validation_doc``), so the split does not
depend on the batches or the workers.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import DataError

BATCH_CHARS = 1 << 20  # text per batch sent to a worker: large enough to amortise the hand-over
IN_FLIGHT_CHARS = 16 << 20  # text per worker read ahead of the writing (see encoded)


def is_validation_doc(index: int, val_fraction: float, seed: int) -> bool:
    """Return whether document ``index`` is held out: a fixed hash, so re-runs split the same way."""
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


@dataclass(frozen=True)
class Job:
    """What encoding a batch needs: the saved tokenizer, EOS, the output dtype and the split's settings."""

    tokenizer_file: str
    eos_id: int
    dtype: str
    val_fraction: float
    seed: int


class Encoded(NamedTuple):
    """A batch of documents, encoded: what the writing process gets back."""

    tokens: np.ndarray  # every document's ids and its EOS, end to end, in the output dtype
    offsets: np.ndarray  # (documents + 1,) int64: document i is tokens[offsets[i]:offsets[i + 1]]
    tops: np.ndarray  # (documents,) the largest id of each document
    is_val: np.ndarray  # (documents,) bool: held out
    text_bytes: int  # UTF-8 bytes of the batch's text (the progress bar's unit)
    eos_inside: np.ndarray  # (documents,) how often the EOS token's text occurs inside each document


class Encoder:
    """Encodes batches with the ``tokenizers`` library's own batch encoding; one per process."""

    def __init__(self, job: Job):
        from tokenizers import Tokenizer

        self.job = job
        self.tokenizer = Tokenizer.from_file(job.tokenizer_file)
        self.dtype = np.dtype(job.dtype)

    def __call__(self, first: int, docs: list[str]) -> Encoded:
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
        return Encoded(tokens, offsets, np.maximum.reduceat(tokens, offsets[:-1]), np.array(is_val, dtype=bool),
                        sum(len(d.encode("utf-8", errors="replace")) for d in docs), eos_inside)


_WORKER: Encoder | None = None  # a pool process's encoder, made once by _start_worker


def _start_worker(job: Job) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before the first encoding: one thread, one core per worker
    _WORKER = Encoder(job)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """Exit once the parent is gone: a killed parent shuts no pool down, and a pool process holds both ends
    of its task queue, so it would otherwise wait for work forever (holding the parent's stdout open)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _encode_in_worker(first: int, docs: list[str]) -> Encoded:
    return _WORKER(first, docs)


def batches(docs: Iterator[str], first: int, batch_chars: int) -> Iterator[tuple[int, list[str]]]:
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


def encoded(batches: Iterator[tuple[int, list[str]]], job: Job, workers: int) -> Iterator[Encoded]:
    """Yield each batch encoded, in order: here for one worker, else by a pool of spawned processes.

    The results are written in input order, so a batch that takes long (one huge document) holds
    up the writing of those after it; the others go on being encoded as long as less than
    ``IN_FLIGHT_CHARS`` of text a worker (or two batches a worker) waits, which bounds the memory.
    """
    if workers == 1:
        encode = Encoder(job)
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
