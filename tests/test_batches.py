"""``BatchMaker``: only the windows a run can train on: integer ids, the schedule's steps, micro-batches
and processes that exist, ids inside the vocabulary."""

import numpy as np
import pytest
import torch

import tstrain
from tstrain.errors import DataError


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
