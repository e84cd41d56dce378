"""Training batches of a TST run from any 1-D token array, as tstrain's own trainer reads them.

``BatchMaker`` turns a step into its windows: which stretch of the tokens each sequence reads is
a pure function of ``(seed, step)`` (batch parity with the baseline, a computed block order per
epoch, no input token read twice in an epoch; see ``reader``), so a loop resumed at any step
reads what an uninterrupted one would, with no loader state. Micro-batches and the slices of
several processes are cut from the same global batch. The tokens may be a NumPy array or memmap,
a prepared data dir's ``TokenData(...).train``, a torch tensor or a list of ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data.reader import WindowReader, WindowSchedule, check_appetite
from .errors import DataError
from .schedule import Schedule, SequenceGroup


@dataclass(frozen=True)
class Piece:
    """``windows`` ``(n, group.window)`` int64: ``n`` sequences of one kind (``group``).

    ``ids_below``: every id was checked to lie in ``[0, ids_below)`` (None: not checked).
    """

    group: SequenceGroup
    windows: torch.Tensor
    ids_below: int | None = None

    @property
    def sequences(self) -> int:
        return self.windows.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Piece:
        return Piece(self.group, self.windows.to(device, non_blocking=non_blocking), self.ids_below)


@dataclass(frozen=True)
class Batch:
    """Sequences of one step, in batch order: one piece per kind they hold (two inside a blend)."""

    pieces: tuple[Piece, ...]

    @property
    def sequences(self) -> int:
        return sum(p.sequences for p in self.pieces)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(tuple(p.to(device, non_blocking) for p in self.pieces))


def refuse_out_of_vocab(windows: torch.Tensor | np.ndarray, vocab_size: int) -> None:
    """Raise a DataError unless every id in ``windows`` lies in ``[0, vocab_size)`` (on a device: one sync)."""
    if windows.numel() if isinstance(windows, torch.Tensor) else windows.size:
        low, high = int(windows.min()), int(windows.max())
        if low < 0 or high >= vocab_size:
            raise DataError(f"the tokens hold ids {low}..{high}, outside the model's vocabulary [0, {vocab_size}); "
                            "check the data against its tokenizer (tstrain verify-data DIR)")


def _as_token_array(tokens) -> Sequence:
    """Return ``tokens`` as something indexable by int64 arrays (arrays and memmaps pass through), refusing
    what is not a 1-D sequence of integer ids (float ids would be truncated and trained on)."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    elif isinstance(tokens, list | tuple):
        tokens = np.asarray(tokens)
    dtype = getattr(tokens, "dtype", None)
    if dtype is None or np.dtype(dtype).kind not in "iu":
        raise TypeError(f"tokens must be a 1-D array of integer token ids; got {type(tokens).__name__} of "
                        f"{dtype if dtype is not None else 'unknown type'}: convert with .astype(numpy.int64) only if "
                        "they are whole ids")
    if len(getattr(tokens, "shape", (0,))) != 1:
        raise ValueError(f"tokens must be 1-D (one stream of ids); got shape {tuple(tokens.shape)}: flatten them")
    return tokens


class BatchMaker:
    """The windows each step of ``schedule`` trains on, read from ``tokens`` in an order keyed by ``seed``.

    ``tokens`` must hold integer ids (a float array is refused, not truncated). ``vocab_size``, when
    given, checks every batch's ids on the CPU (no device sync) and refuses an id outside
    ``[0, vocab_size)`` in one line; without it ``TSTLoss`` checks them against the model's embedding.
    Only the schedule's steps can be asked for (``batch(step)`` past the last step is refused).
    """

    def __init__(self, tokens, schedule: Schedule, seed: int = 0, *, vocab_size: int | None = None):
        if vocab_size is not None and not (isinstance(vocab_size, int) and vocab_size >= 1):
            raise ValueError(f"vocab_size must be a whole number >= 1 (the model's embedding rows) or None; "
                             f"got {vocab_size!r}")
        tokens = _as_token_array(tokens)
        # A prepared split (``TokenData(dir).train``) checks every id it reads against its own vocabulary: the
        # ids are checked here only against a smaller one, and each piece says the bound its ids were held to.
        source = getattr(tokens, "vocab_size", None)
        self.check_below = vocab_size if vocab_size is not None and (source is None or source > vocab_size) else None
        self.ids_below = min((v for v in (vocab_size, source) if v is not None), default=None)
        self.schedule = schedule
        self.layout = WindowSchedule.for_run(schedule)
        self.reader = WindowReader(tokens, self.layout, seed)

    def batch(self, step: int, start: int = 0, count: int | None = None) -> Batch:
        """Return sequences ``[start, start + count)`` of step ``step``'s global batch (all of it by default).

        ``step`` must be one of the schedule's steps, and the sequences within the step's batch.
        """
        return self._sequences(step, self.schedule.sequences(self.schedule.check_step(step)), start, count)

    def _sequences(self, step: int, total: int, start: int, count: int | None) -> Batch:
        """Return sequences ``[start, start + count)`` of step ``step``'s global batch of ``total`` sequences."""
        count = total - start if count is None else count
        if not (0 <= start and 0 <= count and start + count <= total):
            raise ValueError(f"sequences [{start}, {start + count}) are outside step {step}'s {total} sequences")
        pieces = []
        for group, offsets in self.reader.layout(step, start, count):
            piece_group = SequenceGroup(group.bag_size, len(offsets), group.positions, group.variant, group.stride,
                                        group.window)
            pieces.append(Piece(piece_group, self._windows(offsets, group.window), self.ids_below))
        return Batch(tuple(pieces))

    def micro_batch(self, step: int, index: int, grad_accum: int = 1, rank: int = 0, world_size: int = 1) -> Batch:
        """Return micro-batch ``index`` of ``grad_accum`` that process ``rank`` of ``world_size`` trains on in ``step``.

        The global batch is cut into ``world_size`` consecutive slices, each into ``grad_accum``.
        """
        if not (grad_accum >= 1 and world_size >= 1 and 0 <= index < grad_accum and 0 <= rank < world_size):
            raise ValueError(f"micro-batch {index} of {grad_accum} on process {rank} of {world_size} does not exist: "
                             "index must be in [0, grad_accum) and rank in [0, world_size)")
        total = self.schedule.sequences(self.schedule.check_step(step))
        if total % (grad_accum * world_size):
            raise ValueError(f"step {step} holds {total} sequences, which {world_size} processes x {grad_accum} "
                             "micro-batches cannot share evenly; make batch_size a multiple of their product")
        micro = total // world_size // grad_accum
        return self._sequences(step, total, (rank * grad_accum + index) * micro, micro)

    def micro_batches(self, step: int, grad_accum: int = 1, rank: int = 0, world_size: int = 1) -> list[Batch]:
        """Return process ``rank``'s ``grad_accum`` micro-batches of step ``step`` (of ``world_size`` processes)."""
        return [self.micro_batch(step, k, grad_accum, rank, world_size) for k in range(grad_accum)]

    def steps(self, start: int = 0, grad_accum: int = 1, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Yield the micro-batches of steps ``start, start + 1, ...`` to the schedule's end, in order."""
        for step in range(start, self.schedule.steps):
            yield from self.micro_batches(step, grad_accum, rank, world_size)

    def epochs(self, step: int) -> float:
        """Return how many passes over the tokens the steps before ``step`` made."""
        return self.reader.epochs(step)

    def check_appetite(self, max_epochs: float = 1.0) -> float:
        """Return the epochs the whole run reads; raise DataError past ``max_epochs``, warn past 1."""
        return check_appetite(self.reader, self.schedule.steps, max_epochs)

    def _windows(self, offsets: np.ndarray, window: int) -> torch.Tensor:
        rows = self.reader.rows(offsets, window)
        if self.check_below is not None:
            refuse_out_of_vocab(rows, self.check_below)
        return torch.from_numpy(rows)
