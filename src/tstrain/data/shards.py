"""Writing token shards: a shard under a temporary name, hashed as it is written and renamed into place when
closed; a part (one shard per split) filled with whole documents up to a token limit."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..fileio import open_new, refuse_link, write_failed
from .tokens import SPLITS, shard_name

_KEPT = "the parts finished before are kept; run the same command again to continue after them"

if TYPE_CHECKING:
    from .encoding import Encoded


class ShardWriter:
    """One token file being written: under a ``.tmp`` name, hashed as it is written, renamed when closed."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.file = None
        self.sha = hashlib.sha256()
        self.tokens = self.documents = self.top = 0

    def write(self, ids: np.ndarray, documents: int, top: int) -> None:
        try:
            if self.file is None:
                self.file = open_new(self.tmp, "wb")
            self.file.write(ids.data)
        except OSError as e:
            raise write_failed(self.path, e, _KEPT, ids.nbytes) from None
        self.sha.update(ids.data)
        self.tokens += ids.size
        self.documents += documents
        self.top = max(self.top, top)

    def close(self) -> dict | None:
        """Return the shard's manifest entry once it is on disk under its name (None: nothing written)."""
        if self.file is None:
            return None
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, refuse_link(self.path))
        except OSError as e:
            raise write_failed(self.path, e, _KEPT) from None
        return {"file": self.path.name, "tokens": self.tokens, "documents": self.documents,
                "sha256": self.sha.hexdigest(), "max_token_id": self.top}

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()
            self.tmp.unlink(missing_ok=True)


class Part:
    """Part ``index`` being written: documents ``first, first + 1, ...``, each split in its own shard."""

    def __init__(self, out: Path, index: int, first: int):
        self.index, self.first, self.end = index, first, first
        self.eos_in_text = 0  # EOS tokens inside the documents' text (each ends a document there)
        self.shards = {split: ShardWriter(out / shard_name(split, index)) for split in SPLITS}

    def fitting(self, batch: Encoded, start: int, limit: int) -> int:
        """Return how many of the batch's documents from ``start`` on fit: each, unless it would take its
        split's shard past ``limit`` tokens (an empty shard takes any document)."""
        lengths, is_val = np.diff(batch.offsets[start:]), batch.is_val[start:]
        over = np.zeros(len(lengths), dtype=bool)
        for split, mine in (("train", ~is_val), ("val", is_val)):
            after = self.shards[split].tokens + np.cumsum(np.where(mine, lengths, 0))
            over |= mine & (after > limit) & (after - lengths > 0)
        return int(np.argmax(over)) if over.any() else len(lengths)

    def add(self, batch: Encoded, a: int, b: int) -> None:
        """Append the batch's documents ``a..b-1`` to their splits' shards."""
        tokens, is_val = batch.tokens[batch.offsets[a] : batch.offsets[b]], batch.is_val[a:b]
        for split, mine in (("train", ~is_val), ("val", is_val)):
            if mine.any():
                ids = tokens if mine.all() else tokens[np.repeat(mine, np.diff(batch.offsets[a : b + 1]))]
                self.shards[split].write(ids, int(mine.sum()), int(batch.tops[a:b][mine].max()))
        self.end += b - a
        self.eos_in_text += int(batch.eos_inside[a:b].sum())


def rewrite(path: Path, ids: np.ndarray, documents: int) -> dict:
    """Write ``ids`` as the shard ``path`` (through a temporary file and a rename); return its manifest entry."""
    writer = ShardWriter(path)
    writer.write(np.ascontiguousarray(ids), documents, int(ids.max()))
    return writer.close()
