"""Small file helpers shared by the data, checkpoint and run code: hashing and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path, error: type[Exception], fix: str) -> Any:
    """Return the JSON in ``path``; a file cut short or edited into something else raises ``error`` naming it
    and ``fix``."""
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # JSON or UTF-8
        raise error(f"{path} is not valid JSON ({e}): it was cut short or edited; {fix}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill mid-write leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
