"""The deterministic windowed reader: what each step reads, batch parity and once-per-epoch reads."""

import itertools

import numpy as np
import pytest

from tstrain.config import load_config
from tstrain.data.permutation import KeyedPermutation
from tstrain.data.reader import WindowReader, WindowSchedule, check_appetite, validation_windows
from tstrain.errors import DataError
from tstrain.schedule import SequenceGroup


def group(bag_size, count, stride, window):
    """A group of ``count`` sequences reading ``window`` tokens, ``stride`` of them as inputs."""
    return SequenceGroup(bag_size, count, stride // bag_size, "both" if bag_size > 1 else None, stride, window)


def two_phase(B, switch, stride1, window1, stride2, window2, steps=100):
    """The hard switch: ``switch`` steps of bag windows, then next-token windows."""
    bags, tokens = group(4, B, stride1, window1), group(1, B, stride2, window2)
    return WindowSchedule(lambda t: (bags,) if t < switch else (tokens,), steps)


def schedule(B=4, switch=3, L=8, s=4, steps=100):
    return two_phase(B, switch, L * s, (L + 1) * s, L, L + 1, steps)


def test_reader_is_deterministic_and_visits_each_block_once_per_epoch():
    tokens = np.arange(10_000, dtype=np.uint32)
    sch = schedule()
    r1, r2 = WindowReader(tokens, sch, seed=7), WindowReader(tokens, sch, seed=7)
    for step in (0, 2, 3, 50):
        assert np.array_equal(r1.batch(step).numpy(), r2.batch(step).numpy())
    assert not np.array_equal(r1.batch(0).numpy(), WindowReader(tokens, sch, seed=8).batch(0).numpy())
    # Windows are contiguous corpus text; inputs start on block boundaries in phase 1.
    w = r1.batch(1).numpy()
    assert (np.diff(w, axis=1) == 1).all() and (w[:, 0] % sch.block_size == 0).all()
    # Over one epoch, phase-2 inputs tile the usable corpus exactly once.
    sch2 = two_phase(4, 0, 8, 9, 8, 9, steps=300)
    r = WindowReader(tokens[: 300 * 32 + 1], sch2, seed=1)  # exactly 300 steps of 4 x 8 inputs
    steps_per_epoch = r.epoch_tokens // (4 * 8)
    seen = np.concatenate([r.batch(t).numpy()[:, :8].ravel() for t in range(steps_per_epoch)])
    assert np.array_equal(np.sort(seen), np.arange(r.epoch_tokens))
    assert steps_per_epoch == 300 and r.epochs(steps_per_epoch) == 1.0


def test_a_tst_run_tiles_the_epoch_once_across_the_switch():
    # 10 phase-1 steps of 4 x 32 tokens, then phase 2 reads the rest of the epoch in 8-token slices.
    sch = schedule(switch=10, steps=10 + 48)
    blocks = 10 * 4 + 3 * 4 * 4  # phase 1's blocks, then 48 more for phase 2's 192 slices
    r = WindowReader(np.arange(blocks * 32 + sch.tail, dtype=np.int64), sch, seed=5)
    inputs = [row[:32] for t in range(10) for row in r.batch(t).numpy()]
    inputs += [row[:8] for t in range(10, 10 + 48) for row in r.batch(t).numpy()]
    assert np.array_equal(np.sort(np.concatenate(inputs)), np.arange(blocks * 32))
    assert r.epochs(10 + 48) == 1.0


def test_reader_microbatches_are_slices_of_the_full_batch():
    r = WindowReader(np.arange(5000, dtype=np.uint32), schedule(), seed=0)
    for step in (1, 5):
        full = r.batch(step).numpy()
        assert np.array_equal(np.concatenate([r.batch(step, 0, 2).numpy(), r.batch(step, 2, 2).numpy()]), full)


def test_appetite_check_and_validation_windows():
    tokens = np.arange(2000, dtype=np.uint32)
    r = WindowReader(tokens, schedule(), seed=0)
    assert check_appetite(r, 3, 1.0) == pytest.approx(3 * 4 * 32 / r.epoch_tokens)
    with pytest.raises(DataError, match="over data.max_epochs=1.0"):
        check_appetite(r, 100, 1.0)
    with pytest.warns(UserWarning, match="reads the training split"):
        check_appetite(r, 60, 10.0)
    v = validation_windows(tokens, 8, 3).numpy()
    available = (2000 - 1) // 8
    assert v.shape == (3, 9) and v[0, 0] == 0 and v[0, -1] == 8  # windows of seq_len + 1
    assert v[-1, 0] == (available - 1) * 8 and v[1, 0] == round((available - 1) / 2) * 8  # spread evenly
    with pytest.raises(DataError, match="validation split has 5 tokens"):
        validation_windows(tokens[:5], 8, 3)


def test_each_kind_of_sequence_reads_its_own_aligned_region():
    # Next-token sequences first, then bags, for 5 steps; then next-token only. Each kind keeps
    # its own region (block-aligned), so no input token repeats and the bags stay block-aligned.
    tokens, bags = group(1, 3, 8, 9), group(4, 2, 32, 36)
    plan = lambda t: (tokens, bags) if t < 5 else (tokens,)  # noqa: E731
    sch = WindowSchedule(plan, 8, changes=[5])
    assert sch.block_size == 32
    spans = []
    for t in range(8):
        for g, start in zip(plan(t), sch.group_starts(t)):
            assert start % g.stride == 0 and start < sch.offset(t + 1)
            spans += [(start + i * g.stride, g.stride) for i in range(g.count)]
    seen = np.concatenate([np.arange(a, a + n) for a, n in spans])
    assert len(np.unique(seen)) == len(seen)
    assert sch.group_starts(0) == (5 * 2 * 32, 0)  # the finished bag region first, the lasting kind after it
    with pytest.raises(ValueError, match="last segment"):
        WindowSchedule(lambda t: (tokens, bags), 4, changes=[])


# ----------------------------------------------------------------------------------------------
# Batch parity: a step's sequences come from independent places, in every phase and transition
# ----------------------------------------------------------------------------------------------

PLANS = {
    "baseline": {"tst.ratio": 0.0},
    "hard": {},
    "batch-expansion": {"tst.expand": "batch"},
    "output-only": {"tst.variant": "output"},
    "step-down": {"tst.transition": "step-down", "tst.bag_size": 8},
    "blend": {"tst.transition": "blend", "tst.transition_steps": 16},
}


def plan_cfg(overrides, steps=60):
    base = {"train.steps": steps, "tst.ratio": 0.5, "tst.bag_size": 4, "train.batch_size": 16, "train.seq_len": 16}
    return load_config("tiny", overrides={**base, **overrides})


def step_reads(reader, step):
    """Return ``(corpus offset, stride)`` of every sequence of ``step``."""
    return [(int(o), g.stride) for g, offsets in reader.layout(step) for o in offsets]


def adjacent_pairs(reads):
    """Return how many pairs of sequences continue one another in the corpus (o_j == o_i + stride_i)."""
    starts = {o for o, _ in reads}
    return sum((o + stride) in starts for o, stride in reads)


@pytest.mark.parametrize("name", PLANS)
def test_no_two_sequences_of_a_step_continue_each_other_beyond_chance(name):
    cfg = plan_cfg(PLANS[name])
    sched = WindowSchedule.for_run(cfg.schedule)
    reader = WindowReader(np.arange(2_000_000, dtype=np.int64), sched, seed=0)
    adjacent = sum(adjacent_pairs(step_reads(reader, t)) for t in range(60))
    # By chance: each ordered pair continues with probability about 1 / blocks (here > 7,000),
    # so the 60 steps' ~14,000 pairs expect about 2. The old reader gave 12 per phase-2 step.
    pairs = sum(sched.sequences(t) * (sched.sequences(t) - 1) for t in range(60))
    assert adjacent <= 3 * pairs / reader.num_blocks + 3, (adjacent, pairs, reader.num_blocks)


@pytest.mark.parametrize("name", PLANS)
def test_over_an_epoch_no_input_token_is_read_twice(name):
    cfg = plan_cfg(PLANS[name])
    sched = WindowSchedule.for_run(cfg.schedule)
    reader = WindowReader(np.arange(sched.offset(60) + sched.tail, dtype=np.int64), sched, seed=2)
    assert reader.epochs(60) == 1.0  # the corpus is exactly the run's appetite
    inputs = [np.arange(o, o + stride) for t in range(60) for o, stride in step_reads(reader, t)]
    seen = np.concatenate(inputs)
    assert len(np.unique(seen)) == len(seen) == cfg.schedule.data_tokens(60)
    for t in range(60):  # and every window is one stretch of text, as the schedule says
        pieces = reader.pieces(t)
        assert [(size, w.shape[0]) for size, w in pieces] == list(cfg.schedule.mix(t))
        assert all((np.diff(w.numpy(), axis=1) == 1).all() for _, w in pieces)


def test_later_epochs_read_every_token_once_again_in_a_new_order():
    cfg = plan_cfg({}, steps=40)
    sched = WindowSchedule.for_run(cfg.schedule)
    tokens = np.arange(sched.offset(20) + 64 * 16 * 5 + sched.tail, dtype=np.int64)  # phase 2 spans epochs
    reader = WindowReader(tokens, sched, seed=1)
    E = reader.epoch_tokens
    per_epoch: dict[int, list[np.ndarray]] = {}
    for t in range(300):
        for g, region, first in sched.placed_groups(t):
            stream = region.start + (first + np.arange(g.count)) * g.stride
            for pos, o in zip(stream, reader.corpus_starts(region, stream)):
                per_epoch.setdefault(int(pos // E), []).append(np.arange(o, o + g.stride))
    for epoch, inputs in per_epoch.items():
        seen = np.concatenate(inputs)
        assert len(np.unique(seen)) == len(seen), epoch
    assert len(per_epoch) >= 3


def test_phase_1_and_the_baseline_read_placed_block_i_for_sequence_i():
    # Where every stride equals the block (baseline, phase 1 of the hard switch), the column order
    # is the identity: sequence i of the run reads block i as the epoch's order places it.
    for overrides, steps in (({"tst.ratio": 0.0}, 30), ({}, 30)):
        cfg = plan_cfg(overrides)
        sched = WindowSchedule.for_run(cfg.schedule)
        reader = WindowReader(np.arange(500_000, dtype=np.int64), sched, seed=4)
        perm = KeyedPermutation(reader.num_blocks, 4, 0)(np.arange(reader.num_blocks))
        for t in range(steps):
            offsets = reader.layout(t)[0][1]
            expected = perm[t * 16 + np.arange(16)] * sched.block_size
            assert np.array_equal(offsets, expected)


def test_a_step_s_layout_is_a_pure_function_of_the_step():
    cfg = plan_cfg(PLANS["blend"])
    tokens = np.arange(1_000_000, dtype=np.int64)
    a = WindowReader(tokens, WindowSchedule.for_run(cfg.schedule), seed=9)
    b = WindowReader(tokens, WindowSchedule.for_run(cfg.schedule), seed=9)
    for t in itertools.chain(range(50, 60), range(0, 60, 7)):  # any order, fresh or warm reader
        assert all(np.array_equal(x[1], y[1]) for x, y in zip(a.layout(t), b.layout(t)))


class ZeroTokens:
    """A stand-in for a training split of ``n`` tokens that reads zeros: only len() and fancy indexing."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return np.zeros(np.shape(index), dtype=np.uint16)


def test_the_reader_s_memory_does_not_grow_with_the_corpus():
    import tracemalloc

    WindowReader(np.arange(5000), schedule(), seed=0).batch(50)  # numpy's first-use imports, not the reader's
    tracemalloc.start()
    reader = WindowReader(ZeroTokens(32 * 10**7 + 100), schedule(), seed=0)  # 10^7 blocks: 80 MB stored
    steps_per_epoch = reader.epoch_tokens // (4 * 8)
    for step in (0, 1, 3, 4, steps_per_epoch + 5, 2 * steps_per_epoch + 5):
        assert reader.batch(step).shape[0] == 4
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert reader.epochs(2 * steps_per_epoch + 5) > 2
    assert peak < 2**20, peak  # a stored permutation of the blocks would hold 80 MB per epoch
