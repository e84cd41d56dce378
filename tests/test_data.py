"""prepare-data output and the deterministic windowed reader."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from tstrain.data import (
    DataError,
    TokenData,
    WindowReader,
    WindowGroup,
    WindowSchedule,
    check_appetite,
    iter_documents,
    prepare_data,
    validation_windows,
)


def test_prepare_data_packs_documents_with_eos_and_holds_out_validation(data_dir, tmp_path):
    m = json.loads((data_dir / "manifest.json").read_text())
    assert m["vocab_size"] == 320 and m["dtype"] == "uint16" and m["eos_token"] == "<|endoftext|>"
    data = TokenData(data_dir)
    assert len(data.train) == m["train_tokens"] and len(data.val) == m["val_tokens"]
    tok = Tokenizer.from_file(str(data_dir / "tokenizer.json"))
    # The training file decodes back to the training documents, each followed by one EOS.
    train_ids = np.asarray(data.train)
    ends = np.flatnonzero(train_ids == data.eos_id)
    assert len(ends) == m["train_documents"] and ends[-1] == len(train_ids) - 1
    first_doc = tok.decode(train_ids[: ends[0]].tolist())
    docs = list(iter_documents([m["sources"][0]["path"]], "\n\n\n"))
    assert first_doc.strip() in [d.strip() for d in docs]
    assert m["val_documents"] + m["train_documents"] == len(docs)


def test_validation_documents_never_appear_in_training(tmp_path):
    # Unique documents, so membership is unambiguous.
    docs = [f"document number {i} says {' '.join(['word'] * (i % 7 + 3))}" for i in range(300)]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "data"
    prepare_data([src], out, train_tokenizer=300, val_fraction=0.1, progress=False)
    data = TokenData(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))

    def split(ids):
        ids = np.asarray(ids)
        return [tok.decode(x[:-1].tolist()) for x in np.split(ids, np.flatnonzero(ids == data.eos_id) + 1) if len(x)]

    train_docs, val_docs = split(data.train), split(data.val)
    assert sorted(train_docs + val_docs) == sorted(docs)
    assert set(train_docs).isdisjoint(val_docs) and 10 <= len(val_docs) <= 60


def test_prepare_data_reads_parquet_and_reuses_a_tokenizer(data_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"the cat sat on mat {i}" for i in range(200)], "id": list(range(200))}), tmp_path / "t.parquet")
    m = prepare_data([tmp_path / "t.parquet"], tmp_path / "out", tokenizer=data_dir / "tokenizer.json", val_fraction=0.1, progress=False)
    assert m["tokenizer_sha256"] == json.loads((data_dir / "manifest.json").read_text())["tokenizer_sha256"]
    assert m["train_documents"] + m["val_documents"] == 200


def test_bad_inputs_give_clear_errors(tmp_path, data_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 is not a JSON object with a 'text' field"):
        prepare_data([bad], tmp_path / "o", tokenizer=data_dir / "tokenizer.json", progress=False)
    with pytest.raises(DataError, match="does not exist or is not a file"):
        list(iter_documents([tmp_path / "missing.txt"]))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="unsupported input"):
        list(iter_documents([tmp_path / "x.csv"]))
    with pytest.raises(DataError, match="exactly one of --tokenizer"):
        prepare_data([bad], tmp_path / "o")
    with pytest.raises(DataError, match="does not exist"):
        TokenData(tmp_path / "nowhere")


def copy_data(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_shard_and_out_of_range_ids_are_detected(data_dir, tmp_path):
    d = copy_data(data_dir, tmp_path / "trunc")
    with open(d / "train.bin", "r+b") as f:
        f.truncate((d / "train.bin").stat().st_size - 6)
    with pytest.raises(DataError, match="truncated or corrupt"):
        TokenData(d)
    d = copy_data(data_dir, tmp_path / "range")
    arr = np.memmap(d / "train.bin", dtype=np.uint16, mode="r+")
    arr[5] = 40000
    arr.flush()
    with pytest.raises(DataError, match="token id 40000, outside the tokenizer's vocabulary of 320"):
        TokenData(d)


def two_phase(B, switch, stride1, window1, stride2, window2, steps=100):
    """The hard switch: ``switch`` steps of bag windows, then next-token windows."""
    bags, tokens = WindowGroup(4, B, stride1, window1), WindowGroup(1, B, stride2, window2)
    return WindowSchedule(lambda t: (bags,) if t < switch else (tokens,), steps)


def schedule(B=4, switch=3, L=8, s=4):
    return two_phase(B, switch, L * s, (L + 1) * s, L, L + 1)


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


def test_reader_microbatches_are_slices_of_the_full_batch():
    r = WindowReader(np.arange(5000, dtype=np.uint32), schedule(), seed=0)
    full = r.batch(5).numpy()
    assert np.array_equal(np.concatenate([r.batch(5, 0, 2).numpy(), r.batch(5, 2, 2).numpy()]), full)


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


def test_a_mixed_layout_that_does_not_repeat_is_laid_out_step_by_step():
    # Next-token sequences first, then bags: the bags' alignment depends on the step, so the
    # schedule keeps each step's layout; group starts stay aligned and no input token repeats.
    tokens, bags = WindowGroup(1, 3, 8, 9), WindowGroup(4, 2, 32, 36)
    plan = lambda t: (tokens, bags) if t < 5 else (tokens,)  # noqa: E731
    sch = WindowSchedule(plan, 8, changes=[5])
    assert sch.block_size == 32
    spans = []
    for t in range(8):
        for g, start in zip(plan(t), sch.group_starts(t)):
            assert start % g.stride == 0 and start >= sch.offset(t)
            spans += [(start + i * g.stride, g.stride) for i in range(g.count)]
    seen = np.concatenate([np.arange(a, a + n) for a, n in spans])
    assert len(np.unique(seen)) == len(seen)
    with pytest.raises(ValueError, match="last segment"):
        WindowSchedule(lambda t: (tokens, bags), 4, changes=[])
