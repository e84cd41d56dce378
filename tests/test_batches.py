"""``BatchMaker``: only the windows a run can train on: integer ids, the schedule's steps, micro-batches
and processes that exist, ids inside the vocabulary."""

import numpy as np
import pytest
import torch

import tstrain
from tstrain.data.tokens import TokenData
from tstrain.errors import DataError
from tstrain.train.loop import train


def schedule(steps=6):
    return tstrain.Schedule(steps=steps, batch_size=4, seq_len=8, bag_size=2, ratio=0.5)


@pytest.mark.parametrize("tokens", [np.arange(1000, dtype=np.float32), np.arange(1000) + 0.5,
                                    torch.arange(1000, dtype=torch.float64), [0.5, 1.5] * 500,
                                    np.array(["a"] * 1000)])
def test_a_token_array_that_is_not_integer_ids_is_refused_not_truncated(tokens):
    with pytest.raises(TypeError, match="tokens must be a 1-D array of integer token ids"):
        tstrain.BatchMaker(tokens, schedule())


def test_a_token_array_of_more_than_one_dimension_is_refused():
    with pytest.raises(ValueError, match="tokens must be 1-D"):
        tstrain.BatchMaker(np.zeros((10, 100), dtype=np.int64), schedule())


@pytest.mark.parametrize("tokens", [np.arange(1000, dtype=np.uint16), torch.arange(1000), list(range(1000))])
def test_integer_ids_in_any_form_read_alike(tokens):
    want = tstrain.BatchMaker(np.arange(1000), schedule()).batch(0).pieces[0].windows
    assert torch.equal(tstrain.BatchMaker(tokens, schedule()).batch(0).pieces[0].windows, want)


@pytest.mark.parametrize("call", [lambda m: m.batch(6), lambda m: m.batch(-1), lambda m: m.micro_batch(6, 0),
                                  lambda m: m.micro_batches(10)])
def test_a_step_past_the_schedule_is_refused(call):
    with pytest.raises(ValueError, match="outside the schedule's steps 0..5"):
        call(tstrain.BatchMaker(np.arange(5000), schedule()))


@pytest.mark.parametrize("index, grad_accum, rank, world", [(2, 2, 0, 1), (-1, 2, 0, 1), (0, 1, 2, 2), (0, 1, -1, 2),
                                                             (0, 0, 0, 1)])
def test_a_micro_batch_or_a_process_that_does_not_exist_is_refused(index, grad_accum, rank, world):
    maker = tstrain.BatchMaker(np.arange(5000), schedule())
    with pytest.raises(ValueError, match="does not exist"):
        maker.micro_batch(0, index, grad_accum, rank, world)


def test_sequences_outside_the_steps_batch_are_refused():
    maker = tstrain.BatchMaker(np.arange(5000), schedule())
    assert maker.batch(0, 1, 3).sequences == 3
    for start, count in [(3, 2), (-1, 1), (0, 5)]:
        with pytest.raises(ValueError, match="outside step 0's 4 sequences"):
            maker.batch(0, start, count)


def test_ids_are_checked_against_the_vocabulary_when_given_and_marked_as_checked():
    tokens = np.arange(5000) % 300
    with pytest.raises(DataError, match=r"ids \d+..\d+, outside the model's vocabulary \[0, 100\)"):
        tstrain.BatchMaker(tokens, schedule(), vocab_size=100).batch(0)
    piece = tstrain.BatchMaker(tokens, schedule(), vocab_size=300).batch(0).pieces[0]
    assert piece.ids_below == 300 and piece.to("cpu").ids_below == 300
    assert tstrain.BatchMaker(tokens, schedule()).batch(0).pieces[0].ids_below is None
    with pytest.raises(ValueError, match="vocab_size must be a whole number >= 1"):
        tstrain.BatchMaker(tokens, schedule(), vocab_size=0)


def schedule_of(steps=12, **tst):
    return tstrain.Schedule(steps=steps, batch_size=8, seq_len=8, **{"bag_size": 4, "ratio": 0.5, **tst})


def rows_of_kind(batches, kind):
    """Return the windows of one kind of sequence in ``batches``, in order."""
    return torch.cat([p.windows for b in batches for p in b.pieces if p.group.kind == kind])


@pytest.mark.parametrize("tst", [{}, {"transition": "blend", "transition_steps": 4}])
def test_micro_batches_and_process_slices_cut_the_global_batch_in_order(tst):
    tokens = np.random.default_rng(0).integers(0, 500, 20_000)
    maker = tstrain.BatchMaker(tokens, schedule_of(**tst), seed=3)
    for step in range(12):
        whole = maker.batch(step)
        assert whole.sequences == 8 and sum(p.group.count for p in whole.pieces) == 8
        cut = [m for rank in range(2) for m in maker.micro_batches(step, grad_accum=2, rank=rank, world_size=2)]
        assert all(m.sequences == 2 for m in cut)
        for kind in {p.group.kind for p in whole.pieces}:
            assert torch.equal(rows_of_kind([whole], kind), rows_of_kind(cut, kind))


def test_the_batch_maker_reads_lists_tensors_and_memmaps_alike(tmp_path):
    ids = np.random.default_rng(1).integers(0, 300, 5_000).astype(np.uint16)
    path = tmp_path / "tokens.bin"
    ids.tofile(path)
    sources = [ids, np.memmap(path, dtype=np.uint16, mode="r"), ids.tolist(), torch.from_numpy(ids.astype(np.int64))]
    batches = [tstrain.BatchMaker(src, schedule_of(), seed=0).batch(s) for src in sources for s in (0, 7)]
    assert all(torch.equal(b.pieces[0].windows, batches[i % 2].pieces[0].windows) for i, b in enumerate(batches))


def test_the_batch_maker_refuses_ids_outside_the_vocabulary_without_a_device_sync():
    ids = np.random.default_rng(2).integers(0, 300, 5_000)
    ids[100:20_000:37] = 300
    with pytest.raises(DataError, match=r"outside the model's vocabulary \[0, 300\).*verify-data"):
        for step in range(12):
            tstrain.BatchMaker(ids, schedule_of(), seed=0, vocab_size=300).batch(step)


def test_the_batch_maker_reads_what_the_trainer_reads(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.steps": 8, "tst.ratio": 0.5, "train.grad_accum": 2})
    seen = []
    train(cfg, tmp_path / "run", loss_fn=lambda loss, batch: seen.append(batch) or loss(batch))
    maker = tstrain.BatchMaker(TokenData(cfg.data.path).train, cfg.schedule, seed=cfg.train.seed)
    ours = [m for step in range(8) for m in maker.micro_batches(step, grad_accum=2)]
    assert len(seen) == len(ours) == 16
    assert all(a.pieces[0].group == b.pieces[0].group and torch.equal(a.pieces[0].windows, b.pieces[0].windows)
               for a, b in zip(seen, ours))
