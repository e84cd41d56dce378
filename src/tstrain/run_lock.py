"""An exclusive lock on an output dir for the life of a job: two processes never write one run.

The lock is the operating system's advisory lock (``fcntl.flock``) on ``.tstrain.lock`` inside the
dir, opened with ``O_NOFOLLOW``: a link at its name is refused, never written through. The kernel drops it
when the holding process ends, however it ends: a SIGKILLed run leaves the
file behind but no lock, so ``--resume`` works at once, with no stale lock to delete (a job that
ends normally removes the file). The holder
writes its pid and command into the file so that a refused second process can name it. The file
descriptor is not inherited by child processes (tokenizing workers), so a lock ends with its job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import BusyError, ConfigError
from .fileio import open_no_link

LOCK_NAME = ".tstrain.lock"


def holder(directory: Path) -> dict:
    """Return what the lock file of ``directory`` says of its holder (empty if unreadable)."""
    try:
        return json.loads((directory / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _busy(directory: Path, what: str) -> BusyError:
    who = holder(directory)
    pid = who.get("pid")
    name = f"pid {pid}" + (f", `{who['command']}`" if who.get("command") else "") if pid else "pid not recorded"
    stop = f"stop it (kill {pid}) " if pid else "stop it "
    goes_on = ("a stopped prepare-data continues when run again with the same settings" if what == "data dir"
               else "a stopped run continues with --resume")
    return BusyError(f"{directory} is in use by another tstrain process ({name}): two jobs writing one {what} would "
                     f"overwrite each other's files; wait for it to end, or {stop}and run again ({goes_on}), "
                     "or choose another --out")


def _open_locked(directory: Path, what: str) -> int:
    """Return a descriptor of the dir's lock file, locked; the file it names is the one on disk now."""
    path = directory / LOCK_NAME
    while True:
        fd = open_no_link(path, os.O_RDWR | os.O_CREAT)  # never a link's target
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(directory, what) from None
        try:  # a holder that removed the file as it let go (see release): lock the new one instead
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
        directory.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def locked(directory: str | Path, what: str = "run dir") -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` (created if missing) for the ``with`` block; yield the dir.

    Raises ``BusyError`` at once if another process holds it. A dir this call created and that is empty
    when the block ends (a refused or failed job) is removed again.
    """
    directory = Path(directory)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(directory, what)
    except OSError as e:
        raise ConfigError(f"cannot write to {directory}: {e.strerror}; choose another --out") from None
    try:
        record = {"pid": os.getpid(), "command": _command()[:300],
                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield directory
    finally:
        _release(directory, fd, created)


def _command() -> str:
    """Return this process's command line as a person typed it (``tstrain train ...``)."""
    ours = sys.argv and Path(sys.argv[0]).name in ("tstrain", "__main__.py")
    return " ".join(["tstrain", *sys.argv[1:]] if ours else sys.argv)


def _release(directory: Path, fd: int, created: bool) -> None:
    """Let go of the lock, removing its file first (a process that opened the old file sees it gone and
    retries), and the dir too if this job created it and left nothing in it."""
    try:
        (directory / LOCK_NAME).unlink()
        if created and not any(directory.iterdir()):
            directory.rmdir()
    except OSError:
        pass
    finally:
        os.close(fd)
