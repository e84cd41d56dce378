"""Small file helpers shared by the data, checkpoint and run code: hashing, atomic writes that never follow a
link, and the one line a failed write ends in.

Every name tstrain writes inside a run, experiment or data dir goes through ``refuse_link`` (or is opened with
``O_NOFOLLOW``): a symbolic link planted at such a name would make a write change the file it points to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import WriteError


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


def read_json_object(path: Path, error: type[Exception], fix: str) -> dict[str, Any]:
    """Return the JSON object in ``path`` (``read_json``); anything but an object raises ``error`` naming it."""
    found = read_json(path, error, fix)
    if not isinstance(found, dict):
        raise error(f"{path} holds a JSON {type(found).__name__}, not an object: it was edited; {fix}")
    return found


def read_toml(path: Path, error: type[Exception], fix: str) -> dict[str, Any]:
    """Return the TOML table in ``path``; a file cut short or edited into something else raises ``error``
    naming it and ``fix``."""
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid TOML ({e}); {fix}") from None


def refuse_link(path: Path) -> Path:
    """Return ``path``; raise ``WriteError`` if it is a symbolic link (writing there would change its target)."""
    if path.is_symlink():
        raise WriteError(f"{path} is a symbolic link, and tstrain never writes through a link (the write would "
                         f"change {os.readlink(path)} instead): remove the link, or choose another --out")
    return path


def free_space(path: Path) -> str:
    """Return the free space of the file system ``path`` (or its nearest existing parent) is on, in words."""
    for where in (path, *path.parents):
        with contextlib.suppress(OSError):
            return f"{shutil.disk_usage(where).free / 2**20:,.0f} MiB free there"
    return "free space unknown"


def write_failed(path: Path, error: BaseException, kept: str = "nothing written before it was changed",
                 needed: int | None = None) -> WriteError:
    """Return the one-line ``WriteError`` of a failed write of ``path``: the cause, the free space and the fix."""
    if isinstance(error, WriteError):
        return error
    text = (error.strerror if isinstance(error, OSError) else None) or str(error)
    cause = text.splitlines()[0][:200] if text else type(error).__name__
    need = f", about {needed / 2**20:,.1f} MiB needed" if needed else ""
    return WriteError(f"could not write {path} ({cause}; {free_space(path)}{need}); {kept}. Free space (or choose "
                      "another --out) and run the command again")


def open_no_link(path: Path, flags: int, mode: int = 0o644) -> int:
    """Return a descriptor of ``path`` opened with ``flags`` and ``O_NOFOLLOW``: a link at its name raises
    ``WriteError`` naming it, whether it was there before the open or planted just before it (``ELOOP``)."""
    try:
        return os.open(refuse_link(path), flags | os.O_NOFOLLOW, mode)
    except OSError:
        refuse_link(path)
        raise


def open_new(path: Path, mode: str = "w", **kwargs: Any):
    """Open ``path`` for writing without following a link at its name (``O_NOFOLLOW``): a file that is
    there is truncated (``"w"``) or appended to (``"a"``); a link raises ``WriteError`` naming it."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    try:
        fd = open_no_link(path, flags)
    except OSError as e:
        raise write_failed(path, e) from None
    return os.fdopen(fd, mode, **kwargs)


def fresh_tmp(path: Path) -> Path:
    """Return the temporary name of ``path`` (``.NAME.tmp`` beside it), with whatever a killed write left
    there removed (a link is removed, never followed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.is_symlink() or tmp.is_file():
        tmp.unlink()
    elif tmp.is_dir():
        shutil.rmtree(tmp)
    return tmp


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill mid-write leaves the old file,
    a full disk raises ``WriteError`` naming ``path`` and leaves the old file and no temporary one."""
    refuse_link(path)
    tmp = fresh_tmp(path)
    try:
        with open_new(tmp, encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, e, "the file as it was is kept") from None


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure to ``path`` as ``write_text_atomic`` writes text: never through a link, whole."""
    refuse_link(path)
    tmp = fresh_tmp(path)
    try:
        with open_new(tmp, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip("."), dpi=dpi)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, e, "the file as it was is kept") from None


@contextlib.contextmanager
def atomic_dir(path: Path, what: str, needed: int | None = None) -> Iterator[Path]:
    """Yield a fresh temporary dir beside ``path``; when the block ends, put it in place of ``path`` whole.

    ``path`` (a dir, if any) is replaced only once the new one is complete: a failure in the block removes
    the temporary dir and leaves ``path`` as it was; a killed write leaves only the ``.NAME.tmp`` dir, which
    the next write removes. A link at ``path`` is refused. ``OSError`` becomes one ``WriteError`` naming
    ``what``, ``path`` and about the bytes ``needed``.
    """
    refuse_link(path)
    try:
        tmp = fresh_tmp(path)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise write_failed(path, e, f"{what} as it was is kept", needed) from None
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
            raise write_failed(path, e, f"{what} as it was is kept", needed) from None
        raise
