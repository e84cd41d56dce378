"""Reading documents from the files the field ships corpora in.

Plain text (``.txt``, ``.md``, ``.rst``: one document per file, or split on a separator), JSON
lines (``.jsonl``, ``.json``; also ``.jsonl.gz`` and, with the ``zstandard`` package,
``.jsonl.zst``), parquet, and a Hugging Face ``datasets`` directory written by ``save_to_disk``
(its Arrow files, read with pyarrow alone). A directory or a glob stands for the supported files
in it, in sorted order. The text is in a field (``text`` by default) of each record.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from ..errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
JSON_SUFFIXES = (".jsonl", ".json")
COMPRESSED = (".gz", ".zst")


class TextStats:
    """Characters read, characters that were not valid UTF-8 (decoded as U+FFFD), and text files the
    document separator split."""

    def __init__(self) -> None:
        self.chars = 0
        self.replaced = 0
        self.text_files = 0  # plain-text inputs read
        self.separated_files = 0  # of which the document separator split at least once

    def decode(self, raw: bytes) -> str:
        """Return ``raw`` decoded as UTF-8, counting the bytes that were not valid UTF-8."""
        text = raw.decode("utf-8", errors="replace")
        self.chars += len(text)
        self.replaced += text.count("\ufffd") - raw.count("\ufffd".encode())  # U+FFFD already in the file is text
        return text


def kind_of(path: Path) -> str:
    """Return ``text``, ``json``, ``parquet`` or ``datasets`` for a supported input, else ``""``."""
    if path.is_dir():
        return "datasets" if (path / "dataset_info.json").is_file() or (path / "state.json").is_file() else ""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    kinds = {**dict.fromkeys(TEXT_SUFFIXES, "text"), **dict.fromkeys(JSON_SUFFIXES, "json"), ".parquet": "parquet"}
    return kinds.get(last, "")


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Return the input files: a glob or a directory (not a ``datasets`` one) stands for its supported files."""
    out: list[Path] = []
    for item in map(str, inputs):
        if any(c in item for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))]
            if not matches:
                raise DataError(f"the input pattern {item} matches no file")
            out += [m for m in matches if kind_of(m)]
        elif Path(item).is_dir() and kind_of(Path(item)) != "datasets":
            found = [p for p in sorted(Path(item).rglob("*")) if p.is_file() and kind_of(p)]
            if not found:
                raise DataError(f"the input directory {item} holds no .txt, .jsonl(.gz/.zst) or .parquet file")
            out += found
        else:
            out.append(Path(item))
    return out


def _open_bytes(path: Path) -> IO[bytes]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    if path.suffix.lower() == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path} is zstd-compressed: pip install zstandard to read it") from None
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _cut_short(p: Path, e: Exception) -> DataError:
    return DataError(f"{p} ends early or is corrupt ({type(e).__name__}: {str(e)[:200]}): download or compress it "
                     "again, or leave it out of --input")


def _stream_errors() -> tuple[type[Exception], ...]:
    """Return what reading a cut-short or corrupt compressed file raises (gzip: EOFError, BadGzipFile)."""
    try:
        import zstandard
    except ImportError:
        return (EOFError, OSError)
    return (EOFError, OSError, zstandard.ZstdError)


CHUNK_BYTES = 1 << 24  # a text input is read this much at a time
MAX_DOCUMENT_CHARS = 1 << 28  # the longest document a text input may hold: what bounds prepare-data's memory


def _text_chunks(p: Path, stats: TextStats) -> Iterator[str]:
    """Yield a text file's text in chunks of about ``CHUNK_BYTES``, decoded as UTF-8 (counted by ``stats``) with
    line ends as text mode reads them; a ``\\r`` at a chunk's end waits for the next chunk."""
    import codecs

    decoder, tail, held = codecs.getincrementaldecoder("utf-8")(errors="replace"), b"", ""
    try:
        with _open_bytes(p) as f:
            while True:
                raw = f.read(CHUNK_BYTES)
                text = decoder.decode(raw, final=not raw)
                stats.chars += len(text)  # U+FFFD already in the file is text, also across chunk ends
                stats.replaced += text.count("\ufffd") - ((tail + raw).count(_FFFD) - tail.count(_FFFD))
                tail = (tail + raw)[-2:]
                text = held + text
                held = text[-1:] if raw and text.endswith("\r") else ""
                text = (text[:-1] if held else text).replace("\r\n", "\n").replace("\r", "\n")
                if "\x00" in text:
                    raise DataError(f"{p} holds NUL bytes: it is a binary file, not text; leave it out of --input")
                yield text
                if not raw:
                    return
    except _stream_errors() as e:
        raise _cut_short(p, e) from None


_FFFD = "\ufffd".encode()


def _text_documents(p: Path, doc_separator: str | None, stats: TextStats) -> Iterator[str]:
    """Yield a text file's documents (split at ``doc_separator``), reading it in chunks: memory holds one
    chunk and the document being read, which may not pass ``MAX_DOCUMENT_CHARS``."""
    stats.text_files += 1
    buffer, split = "", False
    for text in _text_chunks(p, stats):
        parts = (buffer + text).split(doc_separator) if doc_separator else [buffer + text]
        split |= len(parts) > 1
        buffer = parts.pop()
        if len(buffer) > MAX_DOCUMENT_CHARS:
            raise DataError(f"{p} holds a document of more than {MAX_DOCUMENT_CHARS:,} characters"
                            f"{'' if doc_separator else ' (the whole file: no --doc-separator given)'}; give a "
                            "--doc-separator that splits it, or cut the file into documents")
        yield from (t for t in parts if t.strip())
    stats.separated_files += split
    if buffer.strip():
        yield buffer


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape_separator(flag: str) -> str:
    """Return a ``--doc-separator`` as typed on a command line with its escapes read: ``\\n`` (a backslash
    and an n, which a shell passes as they are) is a newline, ``\\t`` a tab, ``\\r`` a carriage return and
    ``\\\\`` one backslash; any other backslash stays as it is."""
    out, i = [], 0
    while i < len(flag):
        if flag[i] == "\\" and i + 1 < len(flag) and flag[i + 1] in ESCAPES:
            out.append(ESCAPES[flag[i + 1]])
            i += 2
        else:
            out.append(flag[i])
            i += 1
    return "".join(out)


def _json_documents(p: Path, field: str, stats: TextStats) -> Iterator[str]:
    import io

    with _open_bytes(p) as raw, io.BufferedReader(raw) as f:
        for n, line_bytes in _lines(f, p):
            line = stats.decode(line_bytes)
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{p}:{n} is not a JSON object with a {field!r} field") from None
            if text is not None and not isinstance(text, str):
                raise DataError(f"{p}:{n}: {field!r} is a {type(text).__name__}, not a string")
            if text and text.strip():
                yield text


def _lines(f: IO[bytes], p: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, line)`` of a (maybe compressed) file, a cut-short stream as a DataError."""
    n = 0
    try:
        for n, line in enumerate(f, 1):
            yield n, line
    except _stream_errors() as e:
        raise DataError(f"{p} ends early or is corrupt after line {n} ({type(e).__name__}: {str(e)[:200]}): "
                        "download or compress it again, or leave it out of --input") from None


def _arrow_text(batches, p: Path, field: str, schema) -> Iterator[str]:
    import pyarrow as pa

    if field not in schema.names:
        raise DataError(f"{p} has no {field!r} column (columns: {', '.join(schema.names)}); "
                        "choose one with --text-field")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{p}: the {field!r} column holds {kind}, not strings")
    try:
        for batch in batches:
            yield from (t for t in batch.column(batch.schema.get_field_index(field)).to_pylist() if t and t.strip())
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{p} is corrupt: {e}") from None


def _parquet_documents(p: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{p} is not a readable parquet file ({e})") from None
    columns = [field] if field in pf.schema_arrow.names else None
    yield from _arrow_text(pf.iter_batches(columns=columns, batch_size=1024), p, field, pf.schema_arrow)


def _datasets_documents(p: Path, field: str) -> Iterator[str]:
    """A ``datasets`` ``save_to_disk`` directory: its ``*.arrow`` files are Arrow IPC streams."""
    import pyarrow as pa

    files = sorted(p.rglob("*.arrow"))
    if not files:
        raise DataError(f"{p} looks like a Hugging Face datasets directory but holds no .arrow file")
    for f in files:
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(f)))
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{f} is not a readable Arrow stream ({e})") from None
        yield from _arrow_text(reader, f, field, reader.schema)


def iter_documents(paths: Sequence[str | Path], doc_separator: str | None = None, stats: TextStats | None = None,
                   text_field: str = "text") -> Iterator[str]:
    """Yield the documents of ``paths`` (see the module docstring). Empty documents are skipped; bytes
    that are not UTF-8 become U+FFFD and are counted in ``stats``."""
    stats = stats or TextStats()
    for p in expand_inputs(paths):
        if not p.exists():
            raise DataError(f"input {p} does not exist or is not a file")
        kind = kind_of(p)
        if kind == "text":
            yield from _text_documents(p, doc_separator, stats)
        elif kind == "json":
            yield from _json_documents(p, text_field, stats)
        elif kind == "parquet":
            yield from _parquet_documents(p, text_field)
        elif kind == "datasets":
            yield from _datasets_documents(p, text_field)
        else:
            raise DataError(f"unsupported input {p}: use .txt, .jsonl (also .gz, .zst), .parquet, a Hugging Face "
                            "datasets directory, or a directory or glob of such files")
