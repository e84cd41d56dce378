"""The deterministic training reader: which corpus windows each step's sequences read.

Every kind of sequence a run uses (phase-1 bags of ``s``, next-token windows, a step-down's
bags of ``s/2``, ...) reads its own *region* of a stream of token positions. Within a region the
sequences follow one another by their stride, in step order; the stream maps onto the corpus
through a permutation of blocks (``block_size`` = the largest stride) keyed per epoch by
``(seed, epoch)`` and computed per block asked (``permutation.KeyedPermutation``), so the reader's
memory does not grow with the corpus. So the position of every sequence is a pure function of the
step (a resumed run reads exactly what an uninterrupted one would, with no loader state), each
stream position is read at most once per epoch, and a window never straddles two blocks.

Batch parity: a region whose stride is shorter than a block (phase 2 of a TST run, whose blocks
are ``L*s`` long) reads its blocks column by column: sequence ``j`` of the region takes slice
``j // n`` of block ``j % n`` of its ``n`` blocks. Neighbouring sequences of a step then come
from different, independently placed blocks, as a baseline's do, instead of being consecutive
``L``-token slices of one stretch of text. The extra target tokens past a sequence's inputs come
from the corpus right after it.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError
from ..schedule import Schedule, SequenceGroup, StepPlan
from .permutation import KeyedPermutation

# The name of the order in which the reader places blocks: recorded with each run (data.json) and
# checkpoint (state.json), since a run continued in another order would reread some tokens and
# skip others. Change it whenever what a step reads changes.
READER_ORDER = "feistel-blocks-v2"
FIRST_READER_ORDER = "stored-permutation-v1"  # a stored NumPy permutation: runs that record no order




def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


@dataclass
class Region:
    """The stream positions one kind of sequence reads over a stretch of consecutive steps.

    ``spans`` holds ``(first step, end step, sequences before, sequences per step)`` for each
    segment of constant plan the region covers; ``end`` is None for the run's last kind, which
    goes on past the run's end (resumed or extended runs read on).
    """

    stride: int
    spans: list[tuple[int, int | None, int, int]]
    start: int = 0
    end: int | None = None

    def sequences_before(self, step: int) -> int:
        """Return how many of the region's sequences the steps before ``step`` read."""
        i = bisect.bisect_left([first for first, *_ in self.spans], step) - 1
        if i < 0:
            return 0
        first, end, before, count = self.spans[i]
        return before + (min(step, end if end is not None else step) - first) * count

    @property
    def sequences(self) -> int:
        first, end, before, count = self.spans[-1]
        return before + (end - first) * count


class WindowSchedule:
    """Which stream positions each step reads: a step's batch is one or more groups laid end to end.

    Usually one group per step (phase-1 bags, or phase-2 sequences); a blended transition mixes
    both in one batch. Each kind of group reads its own region of the stream (see the module
    docstring); regions start on block boundaries, so a change of kind skips less than one block.
    """

    def __init__(self, plan: Callable[[int], StepPlan], steps: int, changes: Iterable[int] | None = None):
        """``plan(t)`` gives step ``t``'s groups; ``changes`` the steps where it may differ from the step
        before (default: any step). The schedule costs one entry per change, not per step."""
        self.plan = plan
        last = max(steps, 1)
        wanted = range(last) if changes is None else changes
        self._firsts = sorted({0, *(c for c in wanted if 0 <= c < last)})
        self._plans = [plan(first) for first in self._firsts]
        self.block_size = math.lcm(*{g.stride for groups in self._plans for g in groups})
        self.tail = max(g.window - g.stride for groups in self._plans for g in groups)
        self.regions: list[Region] = []
        self._region_of: list[tuple[int, ...]] = []  # per segment: each group's region index
        self._open_regions()
        self._lay_out_regions()

    @classmethod
    def for_run(cls, schedule: Schedule) -> WindowSchedule:
        """Return the stream layout of a TST run: one entry per change of its plan, not per step."""
        return cls(schedule.plan, schedule.steps, schedule.changes())

    def _open_regions(self) -> None:
        """Assign each segment's groups to regions: a kind that goes on from the segment before
        continues its region, any other opens a new one."""
        open_now: dict[tuple[int, int, int], int] = {}
        for i, (first, groups) in enumerate(zip(self._firsts, self._plans)):
            end = self._firsts[i + 1] if i + 1 < len(self._firsts) else None
            kinds = [g.kind for g in groups]
            if len(set(kinds)) != len(kinds):
                raise ValueError(f"step {first} holds two groups of the same kind; merge them into one")
            if end is None and len(groups) != 1:
                raise ValueError("a schedule's last segment must hold one kind of sequence (next-token training)")
            still_open = {}
            for g in groups:
                index = open_now.get(g.kind)
                if index is None:
                    index = len(self.regions)
                    self.regions.append(Region(g.stride, []))
                region = self.regions[index]
                before = region.sequences if region.spans else 0
                region.spans.append((first, end, before, g.count))
                still_open[g.kind] = index
            open_now = still_open
            self._region_of.append(tuple(open_now[g.kind] for g in groups))

    def _lay_out_regions(self) -> None:
        """Give each region its stretch of the stream: finished regions in the order they open,
        the run's last kind after them all."""
        final = self._region_of[-1][0]
        pos = 0
        for index in [i for i in range(len(self.regions)) if i != final] + [final]:
            region = self.regions[index]
            region.start = pos
            if index != final:
                region.end = _round_up(pos + region.sequences * region.stride, self.block_size)
                pos = region.end

    def _segment(self, step: int) -> int:
        return bisect.bisect_right(self._firsts, step) - 1

    def groups(self, step: int) -> StepPlan:
        """Return the groups of sequences step ``step`` trains on, in batch order."""
        return self._plans[self._segment(step)]

    def sequences(self, step: int) -> int:
        """Return the number of sequences the whole batch of ``step`` holds."""
        return sum(g.count for g in self.groups(step))

    def placed_groups(self, step: int) -> list[tuple[SequenceGroup, Region, int]]:
        """Return ``(group, its region, index of its first sequence in the region)`` for each group of ``step``."""
        i = self._segment(step)
        out = []
        for g, index in zip(self._plans[i], self._region_of[i]):
            region = self.regions[index]
            out.append((g, region, region.sequences_before(step)))
        return out

    def group_starts(self, step: int) -> tuple[int, ...]:
        """Return the stream position of each group's first sequence in ``step``, in batch order."""
        return tuple(region.start + first * g.stride for g, region, first in self.placed_groups(step))

    def offset(self, step: int) -> int:
        """Return the stream extent the steps before ``step`` reach: the furthest position they read
        or reserved (region starts included), which measures how much of the corpus they used."""
        reached = 0
        for region in self.regions:
            if region.spans[0][0] < step:
                reached = max(reached, region.start + region.sequences_before(step) * region.stride)
        return reached


class WindowReader:
    """Deterministic training windows: block order permuted per epoch from ``(seed, epoch)``, computed
    per block read (memory O(1) in the corpus)."""

    def __init__(self, tokens: np.ndarray, schedule: WindowSchedule, seed: int):
        self.tokens = tokens
        self.schedule = schedule
        self.seed = seed
        self.block_size = schedule.block_size
        self.num_blocks = (len(tokens) - schedule.tail) // self.block_size
        if self.num_blocks < 1:
            raise DataError(
                f"the training split has {len(tokens)} tokens, fewer than one window of "
                f"{self.block_size + schedule.tail}; use more data or a smaller seq_len / bag_size"
            )
        self.epoch_tokens = self.num_blocks * self.block_size

    def epochs(self, step: int) -> float:
        """Return how many passes over the corpus the steps before ``step`` made."""
        return self.schedule.offset(step) / self.epoch_tokens

    def block_order(self, epoch: int) -> KeyedPermutation:
        """Return where epoch ``epoch`` places each block: a bijection on the blocks, keyed by ``(seed, epoch)``."""
        return KeyedPermutation(self.num_blocks, self.seed, epoch)

    def corpus_starts(self, region: Region, stream: np.ndarray) -> np.ndarray:
        """Return the corpus offsets of sequences at stream positions ``stream`` (int64) of ``region``.

        Within each epoch the region's blocks are read column by column (slice ``j // n`` of block
        ``j % n``), a bijection on the region's part of the epoch, then the epoch's block order
        (``block_order``) places each block in the corpus.
        """
        E, size, stride = self.epoch_tokens, self.block_size, region.stride
        epoch, pos = np.divmod(stream, E)
        lo = np.maximum(region.start - epoch * E, 0)
        hi = E if region.end is None else np.minimum(region.end - epoch * E, E)
        n = (hi - lo) // size
        j = (pos - lo) // stride
        pos = lo + (j % n) * size + (j // n) * stride
        block, inner = np.divmod(pos, size)
        placed = np.empty_like(block)
        for e in np.unique(epoch):
            here = epoch == e
            placed[here] = self.block_order(int(e))(block[here])
        return placed * size + inner

    def rows(self, offsets: np.ndarray, window: int) -> np.ndarray:
        """Return the ``window`` tokens from each corpus offset, ``(n, window)`` int64."""
        return np.asarray(self.tokens[offsets[:, None] + np.arange(window)[None, :]], dtype=np.int64)

    def _rows(self, offsets: np.ndarray, window: int) -> torch.Tensor:
        return torch.from_numpy(self.rows(offsets, window))

    def layout(self, step: int, start: int = 0, count: int | None = None) -> list[tuple[SequenceGroup, np.ndarray]]:
        """Return ``(group, corpus offsets)`` for sequences ``[start, start+count)`` of ``step``'s
        batch, one entry per group they fall in, in batch order."""
        count = self.schedule.sequences(step) - start if count is None else count
        out, first = [], 0
        for g, region, before in self.schedule.placed_groups(step):
            lo, hi = max(start, first), min(start + count, first + g.count)
            if lo < hi:
                index = before + np.arange(lo - first, hi - first, dtype=np.int64)
                out.append((g, self.corpus_starts(region, region.start + index * g.stride)))
            first += g.count
        return out

    def pieces(self, step: int, start: int = 0, count: int | None = None) -> list[tuple[int, torch.Tensor]]:
        """Return sequences ``[start, start+count)`` of step ``step``'s batch as ``(bag_size, (n, window) int64)``
        pieces, one per group they fall in, in batch order."""
        return [(g.bag_size, self._rows(offsets, g.window)) for g, offsets in self.layout(step, start, count)]

    def batch(self, step: int, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Return sequences ``[start, start+count)`` of a single-group step, ``(count, window)`` int64."""
        pieces = self.pieces(step, start, count)
        if len(pieces) != 1:
            raise ValueError(f"step {step} mixes {len(pieces)} kinds of sequences; read it with pieces()")
        return pieces[0][1]


def check_appetite(reader: WindowReader, steps: int, max_epochs: float) -> float:
    """Return the epochs a run of ``steps`` reads; raise DataError past ``max_epochs``, warn past 1."""
    need = reader.schedule.offset(steps)
    epochs = need / reader.epoch_tokens
    if epochs > max_epochs:
        raise DataError(
            f"the run reads {need:,} tokens but the training split holds {reader.epoch_tokens:,} usable tokens: "
            f"{epochs:.2f} epochs, over data.max_epochs={max_epochs}. Phase 1 reads bag_size times the tokens "
            "of a baseline step. Fix: more data, fewer steps, a smaller tst.bag_size or tst.ratio, "
            "or raise data.max_epochs if the reuse is intended"
        )
    if epochs > 1.0:
        warnings.warn(f"the run reads the training split {epochs:.2f} times "
                      f"(each token up to {math.ceil(epochs)} times)", stacklevel=2)
    return epochs


def validation_windows(tokens: np.ndarray, seq_len: int, count: int) -> torch.Tensor:
    """Return ``count`` non-overlapping next-token windows ``(n, seq_len + 1)`` spread evenly
    over the validation split, so every part of a mixed corpus is measured."""
    available = (len(tokens) - 1) // seq_len
    if available < 1:
        raise DataError(
            f"the validation split has {len(tokens)} tokens, fewer than one window of {seq_len + 1}; "
            "prepare the data with a larger --val-fraction or lower train.seq_len"
        )
    if available < count:
        warnings.warn(f"validation split holds {available} windows of {seq_len + 1} tokens; "
                      f"using all of them, not {count}", stacklevel=2)
        count = available
    slots = np.linspace(0, available - 1, count).round().astype(np.int64)
    idx = slots[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
