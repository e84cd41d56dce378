"""Text to token shards (``tstrain prepare-data``): in several processes, and resumable.

The input stream (every document of the inputs in order, ``text_sources``) is cut into *parts*,
contiguous runs of documents. Part ``k`` is written as ``train-0000k.bin`` and ``val-0000k.bin``
(its held-out documents: ``is_validation_doc`` decides from a document's index alone), and is
closed before a document that would take either file past ``shard_tokens`` tokens, so a shard
holds at most ``shard_tokens`` tokens unless one document alone is longer (``shards``). The split
and the cuts depend on the documents only, never on the number of workers or the batches
(``encoding``): any ``workers`` writes the same bytes.

Resume: each shard is written as ``.tmp``, synced and renamed; after each part,
``prepare-state.json`` records the parts done and the next document, with the settings that
decide the tokens (inputs, their sizes and hashes, tokenizer, EOS, split, text field, separator, shard
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
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import faults
from ..errors import DataError
from ..fileio import read_json_object, refuse_link, sha256_file, write_text_atomic
from ..options import check, knob
from ..run_lock import locked
from .encoding import BATCH_CHARS, Job, batches, encoded, is_validation_doc
from .shards import Part, rewrite
from .text_sources import TextStats, expand_inputs, iter_documents, unescape_separator
from .tokenizer import (
    EOS_CANDIDATES,
    MAX_TRAINED_VOCAB,
    find_eos,
    load_tokenizer,
    token_dtype,
    tokenizer_sha,
    train_bpe_tokenizer,
)
from .tokens import FORMAT, MANIFEST, SPLITS

STATE = "prepare-state.json"
STATE_FORMAT = "tstrain-prepare-state-v1"
SHARD_TOKENS = 1 << 29  # the default shard: 1.07 GB of uint16 ids (2.1 GB of uint32)
TOKEN_FILE = re.compile(r"(train|val)(-\d+)?\.bin(\.tmp)?")


@dataclass(frozen=True)
class PrepareOptions:
    """How text becomes token shards: the tokenizer, the split, the shards and the work."""

    tokenizer: str | Path | None = knob(
        None, "an existing tokenizer.json, or a Hugging Face tokenizer dir (EOS from its config)")
    train_tokenizer: int = knob(0, "train a byte-level BPE of this vocabulary size first; 0: use --tokenizer")
    eos_token: str | None = knob(None, "end-of-text token (default: found among the usual names)")
    val_fraction: float = knob(0.01, "fraction of documents held out for validation")
    doc_separator: str | None = knob(
        None, "split .txt files into documents on this string; on a command line \\n, \\t, \\r and \\\\ are read "
              "as escapes", parse=unescape_separator)
    text_field: str = knob("text", "the field (JSON) or column (parquet, datasets) that holds the text")
    overwrite: bool = knob(False, "replace an existing data dir (runs may depend on it)")
    max_bad_text: float = knob(0.001, "refuse input whose share of characters that are not valid UTF-8 exceeds this")
    seed: int = knob(0, "seed of the validation split")
    workers: int = knob(1, "tokenizing processes (each on one thread); 1: in this process, with the tokenizer's "
                           "threads")
    shard_tokens: int = knob(SHARD_TOKENS, "most tokens in one shard file (unless one document alone is longer)")
    progress: bool = knob(True, "progress bars")

    def rules(self) -> list[tuple[bool, str]]:
        return [
            ((self.tokenizer is None) != (not self.train_tokenizer),
             "give exactly one of --tokenizer FILE or --train-tokenizer VOCAB_SIZE"),
            (self.train_tokenizer <= MAX_TRAINED_VOCAB,
             f"--train-tokenizer {self.train_tokenizer:,} is past the largest vocabulary tstrain trains "
             f"({MAX_TRAINED_VOCAB:,}): vocabularies in use are 32K-256K"),
            (0.0 <= self.max_bad_text <= 1.0,  # also false for nan
             f"--max-bad-text is a share of the characters, in [0, 1]; got {self.max_bad_text}"),
            (0.0 < self.val_fraction < 1.0, f"--val-fraction must be in (0, 1); got {self.val_fraction}"),
            (isinstance(self.workers, int) and self.workers >= 1,
             f"--workers must be a whole number of processes, at least 1; got {self.workers}"),
            (isinstance(self.shard_tokens, int) and self.shard_tokens >= 1,
             f"--shard-tokens must be a whole number of tokens, at least 1; got {self.shard_tokens}"),
        ]


def prepare_data(inputs: Sequence[str | Path], out_dir: str | Path, options: PrepareOptions | None = None, *,
                 batch_chars: int = BATCH_CHARS, on_part: Callable[[int], None] | None = None) -> dict:
    """Tokenize ``inputs`` into shards in ``out_dir`` (see the module docstring); return the manifest.

    ``inputs`` are files, directories or globs (``text_sources``); ``options`` (``PrepareOptions``)
    give the tokenizer (an existing one, or ``train_tokenizer=VOCAB`` to train a byte-level BPE on
    the training documents first), the split, the shards and the workers. A finished data dir is
    replaced only with ``overwrite``; an unfinished one with the same settings is resumed. Text with
    more than ``max_bad_text`` of its characters not valid UTF-8 is refused (any at all is warned
    about). ``workers > 1`` starts spawned processes, which re-import the calling script: call it
    from under ``if __name__ == "__main__":`` in a script. ``batch_chars`` is the text of one batch
    handed to a worker; ``on_part(k)`` is called after part ``k`` is recorded (a seam for tests).
    """
    o = options or PrepareOptions()
    files = _check_inputs(inputs)
    check(o, DataError)
    tok, eos_token = None, o.eos_token
    if not o.train_tokenizer:
        tok, eos_token = load_tokenizer(o.tokenizer, eos_token)
        find_eos(tok, eos_token)  # refuse a tokenizer without EOS before anything is written
    settings = {"sources": [{"path": str(p.resolve()), "bytes": _size(p), "sha256": _content_hash(p)} for p in files],
                "tokenizer": f"trained, vocabulary {o.train_tokenizer}" if o.train_tokenizer else tokenizer_sha(tok),
                "eos_token": eos_token, "val_fraction": o.val_fraction, "seed": o.seed, "text_field": o.text_field,
                "doc_separator": o.doc_separator, "shard_tokens": o.shard_tokens}
    _refuse_finished(Path(out_dir), o.overwrite)
    with locked(out_dir, "data dir") as out, _removed_on_failure(out):
        _refuse_finished(out, o.overwrite)  # again under the lock: another process may have finished it
        _check_writable(out)
        state = _resumable_state(out, settings, o.overwrite)
        if state is None:
            if o.train_tokenizer:
                docs = iter_documents(files, o.doc_separator, TextStats(), o.text_field)
                train_docs = (doc for i, doc in enumerate(docs) if not is_validation_doc(i, o.val_fraction, o.seed))
                tok = train_bpe_tokenizer(train_docs, o.train_tokenizer, eos_token or EOS_CANDIDATES[0], o.progress)
            tok.save(str(refuse_link(out / "tokenizer.json")))
            state = {"format": STATE_FORMAT, "settings": settings,
                     "tokenizer_sha256": sha256_file(out / "tokenizer.json"),
                     "dtype": token_dtype(tok.get_vocab_size(with_added_tokens=True)).name, "parts": [],
                     "next_document": 0}
            write_text_atomic(out / STATE, json.dumps(state, indent=1) + "\n")
        tok, _ = load_tokenizer(out / "tokenizer.json", None)  # the saved file: what every worker loads
        eos_name, eos_id = find_eos(tok, eos_token)
        vocab_size = tok.get_vocab_size(with_added_tokens=True)
        job = Job(str(out / "tokenizer.json"), eos_id, state["dtype"], o.val_fraction, o.seed)
        stats = TextStats()  # counted on the pass that writes the tokens (documents skipped on resume included)
        docs = iter_documents(files, o.doc_separator, stats, o.text_field)
        _tokenize(out, state, docs, job, o.workers, batch_chars, o.progress, on_part)
        _hold_out_tail(out, state, o.val_fraction)
        manifest = _manifest(state, vocab_size, (eos_name, eos_id), stats.replaced)
        _check_result(out, manifest, stats, o.max_bad_text)
        write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        (out / STATE).unlink()
        return manifest


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _content_hash(path: Path) -> str:
    """Return the SHA-256 of an input's bytes (a dir: over its files sorted by relative path, each path and hash)."""
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(f for f in path.rglob("*") if f.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def corpus_hash(sources: list[dict]) -> str:
    """Return the hash that names the text a data dir was made from: the SHA-256 over its inputs' hashes, in the
    order they were read (the order decides the split), not their paths: a moved copy has the same hash."""
    return hashlib.sha256("".join(f"{s['sha256']}\n" for s in sources).encode()).hexdigest()


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
    state = read_json_object(out / STATE, DataError, "pass --overwrite to start over")
    if not isinstance(state.get("parts", []), list) or not isinstance(state.get("settings", {}), dict):
        raise DataError(f"{out / STATE}: parts or settings is not a list or object: it was edited; pass --overwrite "
                        "to start over")
    return state


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


def _tokenize(out: Path, state: dict, docs: Iterator[str], job: Job, workers: int, batch_chars: int,
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
    part = Part(out, len(state["parts"]), done)
    try:
        with closing(encoded(batches(docs, done, batch_chars), job, workers)) as results:
            for batch in results:
                bar.update(batch.text_bytes)
                start = 0
                while start < len(batch.is_val):
                    end = start + part.fitting(batch, start, state["settings"]["shard_tokens"])
                    part.add(batch, start, end)
                    if end < len(batch.is_val):
                        _record_part(out, state, part, on_part)
                        part = Part(out, part.index + 1, part.end)
                    start = end
        if part.end > part.first:
            _record_part(out, state, part, on_part)
    finally:
        for shard in part.shards.values():
            shard.abandon()
        bar.close()


def _record_part(out: Path, state: dict, part: Part, on_part: Callable[[int], None] | None) -> None:
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
        p["val"] = rewrite(out / shard["file"].replace("train", "val", 1), ids[ids.size - take :], 1)
        p["train"] = (rewrite(out / shard["file"], ids[: ids.size - take], shard["documents"]) if take < ids.size
                      else None)
        if p["train"] is None:
            (out / shard["file"]).unlink()
        need -= take
    documents = sum(p["end_document"] - p["first_document"] for p in state["parts"])
    print(f"{documents} document{'s' if documents != 1 else ''} too few to hold any out whole: the validation split "
          f"is the last {state['val_from_tail']:,} tokens ({val_fraction:g}) of the token stream instead")



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
        "corpus_sha256": corpus_hash(settings["sources"]),
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
