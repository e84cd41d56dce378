"""The ``tstrain`` command: one verb per job, each parsing its flags and calling one function.

``parsers`` builds the flags of every verb, ``verbs`` runs each; ``main`` here runs one and turns
what stops it into one line and an exit code: a ``TstrainError`` or a missing optional package is
2, Ctrl-C 130, SIGTERM 143, a closed pipe 141.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import TstrainError
from ..extras import check_extras, missing_extra
from .parsers import build_parser

__all__ = ["main", "build_parser", "check_extras", "missing_extra"]


def _how_to_continue(args: argparse.Namespace) -> str:
    """Return what continues an interrupted verb: --resume for train, the same command for the experiments."""
    if args.verb == "train":
        from ..train.checkpoint import list_checkpoints
        from ..train.run_dir import CHECKPOINTS

        ckpts = list_checkpoints(Path(args.out) / CHECKPOINTS)
        where = f"the newest checkpoint is {ckpts[-1].name}" if ckpts else "no checkpoint was written yet"
        return f"{where}; continue with `tstrain train --out {args.out} --resume`"
    if args.verb in ("compare", "sweep", "ablate", "scale"):
        return "finished runs are kept; run the same command again to continue"
    if args.verb == "prepare-data":
        return "the finished parts are kept; run the same command again to resume"
    return "nothing was finished"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), raised where the process is so it stops as Ctrl-C does."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        check_extras(args.needs)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at exit
        return code
    except ModuleNotFoundError as e:
        fix = missing_extra(e)
        if fix is None:
            raise
        print(f"tstrain {args.verb}: error: {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one message, not one per process
            print(f"tstrain {args.verb}: stopped ({how}). {_how_to_continue(args)}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:  # `tstrain batch | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        return 141
    except OSError as e:  # the machine's, not the code's: a full disk, a missing or unwritable path
        where = f": {e.filename}" if e.filename else ""
        print(f"tstrain {args.verb}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except TstrainError as e:
        print(f"tstrain {args.verb}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
