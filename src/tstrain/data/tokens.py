"""Prepared data on disk, and opening it: token shards behind one manifest.

A data dir made by ``tstrain prepare-data`` (``prepare.py``) holds the tokens of each split as
raw uint16/uint32 ids (documents joined with EOS) in shards ``train-00000.bin``,
``val-00000.bin``, ... of a bounded size, listed in ``manifest.json`` (format
``tstrain-tokens-v2``: per shard its file, tokens, documents, SHA-256 and largest id), next to
the ``tokenizer.json`` that made them. Dirs of the first format (``tstrain-tokens-v1``: one
``train.bin`` and one ``val.bin``) open as one shard per split.

Opening trusts the manifest's figures and checks only what is O(shards): each file's size, the
largest ids against the vocabulary, the tokenizer's hash, shard names that stay inside the dir.
Every read of a split (``Tokens``) checks the ids it read against the vocabulary, so a token file
changed after it was written stops a run with a message. ``TokenData.verify()`` (``tstrain
verify-data``) reads every token. Which windows of the training split a run reads is the
reader's business (``reader.py``); it sees one sequence of tokens (``Tokens``), not the shards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import sha256_file

MANIFEST = "manifest.json"
FORMAT = "tstrain-tokens-v2"
FORMAT_V1 = "tstrain-tokens-v1"
SPLITS = ("train", "val")


def shard_name(split: str, part: int) -> str:
    """Return the file name of ``split``'s shard of part ``part``: ``train-00003.bin``."""
    return f"{split}-{part:05d}.bin"


class Tokens:
    """One split's tokens as one 1-D sequence: its shards' memory maps end to end.

    Reads like the array it stands for: ``len(x)``, ``x[i]``, ``x[a:b]`` and ``x[idx]`` for an
    integer array of any shape (an array of ``idx``'s shape), also across shard boundaries, and
    ``np.asarray(x)`` (reads everything). It holds one memory map per shard: O(shards), never
    O(tokens). With one shard every read is the memory map's own, as fast as before shards.
    """

    def __init__(self, maps: Sequence[np.ndarray], vocab_size: int | None = None, source: str = "the data dir"):
        if not maps:
            raise ValueError("a token sequence needs at least one shard")
        self.maps = list(maps)
        self.vocab_size, self.source = vocab_size, source  # every read is checked against vocab_size if given
        self.dtype = self.maps[0].dtype
        self.starts = np.concatenate([[0], np.cumsum([len(m) for m in self.maps])]).astype(np.int64)
        self._len = int(self.starts[-1])

    def __len__(self) -> int:
        return self._len

    @property
    def shape(self) -> tuple[int]:
        return (self._len,)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[0 : self._len], dtype=dtype)

    def __getitem__(self, key):
        if len(self.maps) == 1:
            out = self.maps[0][key]
        elif isinstance(key, slice):
            out = self._slice(key)
        elif isinstance(key, (int, np.integer)):
            out = self._gather(np.asarray(key))[()]
        else:
            out = self._gather(np.asarray(key))
        if self.vocab_size is not None and np.size(out) and np.max(out) >= self.vocab_size:
            self._refuse(int(np.max(out)))
        return out

    def _refuse(self, top: int) -> None:
        """Raise DataError for an id outside the vocabulary in what was just read: every read is checked (one
        max over ids already in memory, on the CPU), so a changed token file stops a run with a message,
        not with an index error on the device."""
        raise DataError(f"the tokens read from {self.source} hold id {top}, outside the tokenizer's vocabulary of "
                        f"{self.vocab_size}: a token file changed after it was written; find it with "
                        f"`tstrain verify-data {self.source}`, then re-run `tstrain prepare-data`")

    def _shard_of(self, positions: np.ndarray) -> np.ndarray:
        """Return the shard holding each of ``positions`` (non-negative, in range)."""
        return np.searchsorted(self.starts[1:], positions, side="right")

    def _slice(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self._len)
        if step != 1:
            return self._gather(np.arange(start, stop, step))
        if stop <= start:
            return np.empty(0, self.dtype)
        first, last = (int(s) for s in self._shard_of(np.array([start, stop - 1])))
        pieces = [self.maps[s][max(start - self.starts[s], 0) : stop - self.starts[s]] for s in range(first, last + 1)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        """Return ``tokens[idx]``: rows (along the last axis) that lie in one shard take one gather per
        shard; a row that crosses a boundary (rare: a window over two shards) is read element-wise."""
        if idx.dtype.kind not in "iu":
            raise IndexError(f"tokens are indexed by integers, not {idx.dtype}")
        if idx.size == 0:
            return np.empty(idx.shape, self.dtype)
        rows = idx.reshape(-1, idx.shape[-1] if idx.ndim else 1).astype(np.int64, copy=False)
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        if lo.min() < -self._len or hi.max() >= self._len:
            raise IndexError(f"index out of range for {self._len} tokens")
        if lo.min() < 0:
            rows = np.where(rows < 0, rows + self._len, rows)
            lo, hi = rows.min(axis=1), rows.max(axis=1)
        first, last = self._shard_of(lo), self._shard_of(hi)
        if first.min() == last.max():  # the usual case: every row in one shard
            s = int(first[0])
            return self.maps[s][rows - self.starts[s] if s else rows].reshape(idx.shape)
        out = np.empty(rows.shape, self.dtype)
        whole = first == last
        for s in np.unique(first[whole]):
            r = np.flatnonzero(whole & (first == s))
            out[r] = self.maps[s][rows[r] - self.starts[s]]
        for r in np.flatnonzero(~whole):
            shard = self._shard_of(rows[r])
            for s in np.unique(shard):
                here = shard == s
                out[r, here] = self.maps[s][rows[r, here] - self.starts[s]]
        return out.reshape(idx.shape)


class TokenData:
    """A prepared data dir: each split's shards memory-mapped as one ``Tokens``, checked against the manifest.

    Opening costs O(shards), not O(tokens): file sizes against the manifest's token counts, the
    manifest's largest ids (checked when the tokens were written) against the vocabulary, and the
    tokenizer's hash. ``verify()`` (``tstrain verify-data``) reads every token.
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
        except ValueError as e:  # JSON or UTF-8
            raise DataError(f"{mpath} is not valid JSON ({e}); re-run `tstrain prepare-data`") from None
        if not isinstance(self.manifest, dict):
            raise DataError(f"{mpath} is not a JSON object; re-run `tstrain prepare-data`")
        if self.manifest.get("format") not in (FORMAT, FORMAT_V1):
            raise DataError(f"{mpath} has format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        try:
            self.vocab_size = int(self.manifest["vocab_size"])
            self.eos_id = int(self.manifest["eos_id"])
            self.dtype = np.dtype(self.manifest["dtype"])
            self._check_bounds(mpath)
            self.shards = {name: self._shard_list(name) for name in SPLITS}
            self.train = self._open("train")
            self.val = self._open("val")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{mpath} lacks or garbles a field ({type(e).__name__}: {e}): the manifest is truncated "
                            "or edited; re-run `tstrain prepare-data`") from None
        self._check_tokenizer()  # last: the one check that reads a file whole

    def _check_bounds(self, mpath: Path) -> None:
        """Refuse a manifest whose vocabulary, EOS id or dtype cannot be those of token shards: the vocabulary
        sizes the model (a vocab_size of 10^12 would ask for terabytes), so it must fit the dtype the ids are in."""
        if self.dtype.kind != "u" or self.dtype.itemsize not in (2, 4):
            raise DataError(f"{mpath}: dtype {self.dtype.name!r} is not uint16 or uint32: the manifest was edited; "
                            "re-run `tstrain prepare-data`")
        if not 2 <= self.vocab_size <= np.iinfo(self.dtype).max + 1:
            raise DataError(f"{mpath}: vocab_size {self.vocab_size} is outside 2..{np.iinfo(self.dtype).max + 1}, "
                            f"what {self.dtype.name} ids can hold: the manifest was edited; "
                            "re-run `tstrain prepare-data`")
        if not 0 <= self.eos_id < self.vocab_size:
            raise DataError(f"{mpath}: eos_id {self.eos_id} is outside the vocabulary of {self.vocab_size}: the "
                            "manifest was edited; re-run `tstrain prepare-data`")

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

    def _check_vocabulary(self) -> None:
        """Refuse a manifest whose vocabulary is not its tokenizer's (ids are checked against it). Part of
        ``verify()``, not of opening: parsing a 128K-token tokenizer takes about a second."""
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(self.path / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
        if size != self.vocab_size:
            raise DataError(f"{self.path / MANIFEST} records a vocabulary of {self.vocab_size} but its tokenizer.json "
                            f"has {size} tokens: the manifest was edited; re-run `tstrain prepare-data`")

    @property
    def identity(self) -> dict[str, object]:
        """Return what identifies these data wherever the dir lives: the manifest's hash and token counts."""
        return {"manifest_sha256": sha256_file(self.path / MANIFEST), "train_tokens": len(self.train),
                "val_tokens": len(self.val), "tokenizer_sha256": self.manifest.get("tokenizer_sha256")}

    def _shard_list(self, name: str) -> list[dict]:
        """Return the manifest's shards of split ``name`` (a v1 dir: its one file, as one shard)."""
        m = self.manifest
        if m["format"] == FORMAT_V1:
            return [{"file": f"{name}.bin", "tokens": int(m[f"{name}_tokens"]), "sha256": m.get(f"{name}_sha256"),
                     "max_token_id": m.get("max_token_id")}]
        shards = [s for s in m["shards"][name] if s["tokens"] > 0]
        for s in shards:
            self.shard_path(s)  # a manifest names files in its own dir, nowhere else
        if sum(s["tokens"] for s in shards) != m[f"{name}_tokens"]:
            raise DataError(f"{self.path / MANIFEST} lists {name} shards of {sum(s['tokens'] for s in shards)} tokens "
                            f"but {m[f'{name}_tokens']} {name} tokens: the manifest is corrupt; "
                            "re-run `tstrain prepare-data`")
        return shards

    def shard_path(self, shard: dict) -> Path:
        """Return a shard's file, refusing a name that leads out of the data dir (``../x.bin``, ``/x.bin``)."""
        name = shard.get("file")
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise DataError(f"{self.path / MANIFEST} names the shard file {name!r}, outside the data dir: a manifest "
                            "lists files of its own dir only; re-run `tstrain prepare-data`")
        return self.path / name

    def _open(self, name: str) -> Tokens:
        """Return split ``name`` as one sequence over its shards, each checked by size and largest id."""
        maps = []
        for shard in self.shards[name]:
            f, expected = self.shard_path(shard), int(shard["tokens"])
            if not f.is_file():
                raise DataError(f"{f} is missing; restore it or re-run `tstrain prepare-data`")
            size = f.stat().st_size
            if size != expected * self.dtype.itemsize:
                raise DataError(
                    f"{f} holds {size} bytes but the manifest promises {expected} {self.dtype.name} tokens "
                    f"({expected * self.dtype.itemsize} bytes): the file is truncated or corrupt; "
                    "re-run `tstrain prepare-data`")
            top = shard.get("max_token_id")
            top = int(self.manifest.get("max_token_id", self.vocab_size) if top is None else top)
            if top >= self.vocab_size:
                raise DataError(f"{self.path / MANIFEST} records token id {top} in {f.name}, outside the tokenizer's "
                                f"vocabulary of {self.vocab_size}: the data were made with another tokenizer; "
                                "re-run `tstrain prepare-data`")
            maps.append(np.memmap(f, dtype=self.dtype, mode="r"))
        if not maps:
            raise DataError(f"{self.path / MANIFEST} lists no {name} tokens; re-run `tstrain prepare-data`")
        return Tokens(maps, self.vocab_size, str(self.path))

    def verify(self, chunk: int = 1 << 24) -> dict[str, int]:
        """Read every token of every shard once: raise DataError naming each shard with an id outside the
        vocabulary or a SHA-256 other than the manifest's; return ``{split: largest id}``. Memory: one
        chunk of ``chunk`` tokens."""
        self._check_vocabulary()
        out, problems = {}, []
        for name in SPLITS:
            out[name] = 0
            for shard in self.shards[name]:
                top, problem = self._verify_shard(shard, chunk)
                out[name] = max(out[name], top)
                if problem:
                    problems.append(problem)
        if problems:
            many = f"{len(problems)} token files are corrupt: " if len(problems) > 1 else ""
            raise DataError(f"{many}{'; '.join(problems)}; re-run `tstrain prepare-data`")
        return out

    def _verify_shard(self, shard: dict, chunk: int) -> tuple[int, str]:
        """Return ``(largest id, what is wrong or "")`` of one shard, read once for both checks."""
        f, h, top = self.shard_path(shard), hashlib.sha256(), 0
        with open(f, "rb") as fh:
            for buf in iter(lambda: fh.read(chunk * self.dtype.itemsize), b""):
                h.update(buf)
                top = max(top, int(np.frombuffer(buf, dtype=self.dtype).max()))
        if top >= self.vocab_size:
            return top, (f"{f} contains token id {top}, outside the tokenizer's vocabulary of {self.vocab_size}: "
                         "the file is corrupt or was made with another tokenizer")
        if shard.get("sha256") and h.hexdigest() != shard["sha256"]:
            return top, f"{f} does not match the SHA-256 in the manifest: it changed after it was written (corrupt)"
        return top, ""
