"""Sharded data: bounded shards, any number of workers and an interrupted preparation give the same
bytes, v1 dirs still open, the token sequence reads like one array, verify-data names the bad shard."""

import json
import shutil

import numpy as np
import pytest

from tstrain.cli import main
from tstrain.data.prepare import STATE, PrepareOptions, prepare_data
from tstrain.data.tokens import FORMAT_V1, TokenData, Tokens
from tstrain.errors import DataError
from tstrain.fileio import sha256_file


class Stop(Exception):
    """Stands for a crash between two parts."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from conftest import make_corpus

    return make_corpus(tmp_path_factory.mktemp("text") / "c.txt", docs=800, seed=3)


def prepare(corpus, data_dir, out, on_part=None, **kw):
    args = {"tokenizer": data_dir / "tokenizer.json", "doc_separator": "\n\n\n", "val_fraction": 0.1,
            "progress": False, "shard_tokens": 1500, **kw}
    return prepare_data([corpus], out, PrepareOptions(**args), batch_chars=3000, on_part=on_part)


def files_of(d):
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def sharded(corpus, data_dir, tmp_path_factory):
    """The reference: the corpus prepared without interruption, one worker, shards of 1500 tokens."""
    out = tmp_path_factory.mktemp("sharded") / "data"
    prepare(corpus, data_dir, out)
    return out


def test_shards_are_bounded_and_the_manifest_adds_them_up(sharded, corpus, data_dir, tmp_path):
    m = json.loads((sharded / "manifest.json").read_text())
    data = TokenData(sharded)
    assert m["format"] == "tstrain-tokens-v2" and len(m["shards"]["train"]) > 5 and len(m["shards"]["val"]) > 2
    for split in ("train", "val"):
        shards = m["shards"][split]
        assert sum(s["tokens"] for s in shards) == m[f"{split}_tokens"] == len(getattr(data, split))
        assert sum(s["documents"] for s in shards) == m[f"{split}_documents"]
        for s in shards:
            ids = np.fromfile(sharded / s["file"], dtype=np.uint16)
            assert s["tokens"] <= 1500 and len(ids) == s["tokens"] and ids[-1] == data.eos_id  # ends a document
            assert (ids == data.eos_id).sum() == s["documents"] and ids.max() == s["max_token_id"]
            assert sha256_file(sharded / s["file"]) == s["sha256"]
    assert m["max_token_id"] == max(s["max_token_id"] for s in m["shards"]["train"] + m["shards"]["val"])
    whole = prepare(corpus, data_dir, tmp_path / "whole", shard_tokens=10**9)  # one shard per split
    assert len(whole["shards"]["train"]) == 1 and whole["train_tokens"] == m["train_tokens"]
    assert np.array_equal(np.asarray(TokenData(tmp_path / "whole").train), np.asarray(data.train))
    assert np.array_equal(np.asarray(TokenData(tmp_path / "whole").val), np.asarray(data.val))


def test_any_number_of_workers_writes_the_same_bytes(sharded, corpus, data_dir, tmp_path, monkeypatch):
    from tstrain.data import encoding

    monkeypatch.setattr(encoding, "IN_FLIGHT_CHARS", 4000)  # the writing waits for results, not only at the end
    prepare(corpus, data_dir, tmp_path / "two", workers=2)
    assert files_of(tmp_path / "two") == files_of(sharded)


def test_an_interrupted_preparation_resumes_to_the_same_bytes(corpus, tmp_path, monkeypatch, capsys):
    from tstrain.data import prepare as prep

    options = PrepareOptions(train_tokenizer=300, doc_separator="\n\n\n", val_fraction=0.1, progress=False,
                             shard_tokens=1500)
    prepare_data([corpus], tmp_path / "clean", options, batch_chars=3000)

    def crash(part):
        if part == 3:
            raise Stop

    with pytest.raises(Stop):
        prepare_data([corpus], tmp_path / "cut", options, batch_chars=3000, on_part=crash)
    assert (tmp_path / "cut" / STATE).is_file() and not (tmp_path / "cut" / "manifest.json").exists()
    (tmp_path / "cut" / "train-00004.bin.tmp").write_bytes(b"half a part")  # what a kill mid-part leaves
    monkeypatch.setattr(prep, "train_bpe_tokenizer", lambda *a, **k: pytest.fail("the saved tokenizer is reused"))
    prepare_data([corpus], tmp_path / "cut", options, batch_chars=3000)
    assert "resuming the preparation of" in capsys.readouterr().out
    assert files_of(tmp_path / "cut") == files_of(tmp_path / "clean")


def test_a_preparation_killed_while_closing_a_part_resumes_to_the_same_bytes(sharded, corpus, data_dir, tmp_path):
    from conftest import launch

    args = ["prepare-data", "--input", str(corpus), "--tokenizer", str(data_dir / "tokenizer.json"),
            "--doc-separator", "\n\n\n", "--val-fraction", "0.1", "--shard-tokens", "1500", "--no-progress",
            "--workers", "2", "--out", str(tmp_path / "data")]
    killed = launch(args, fault="prepare:5")
    assert killed.returncode == -9  # SIGKILL: part 5's files are in place, the progress file does not list them
    assert (tmp_path / "data" / "train-00005.bin").is_file() and not (tmp_path / "data" / "manifest.json").exists()
    resumed = launch(args)
    assert resumed.returncode == 0, resumed.stderr
    assert "at part 5" in resumed.stdout
    assert files_of(tmp_path / "data") == files_of(sharded)


def test_resuming_with_other_settings_is_refused(corpus, data_dir, tmp_path, capsys):
    def crash(part):
        if part == 1:
            raise Stop

    with pytest.raises(Stop):
        prepare(corpus, data_dir, tmp_path / "d", on_part=crash)
    with pytest.raises(DataError, match=r"other settings \(--val-fraction 0.1 then, 0.2 now\).*--overwrite"):
        prepare(corpus, data_dir, tmp_path / "d", val_fraction=0.2)
    args = ["prepare-data", "--input", str(corpus), "--tokenizer", str(data_dir / "tokenizer.json"),
            "--doc-separator", "\n\n\n", "--val-fraction", "0.1", "--shard-tokens", "999", "--no-progress", "--out",
            str(tmp_path / "d")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--shard-tokens 1500 then, 999 now" in err and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0 and STATE not in files_of(tmp_path / "d")
    assert TokenData(tmp_path / "d").manifest["shard_tokens"] == 999


def write_v1(src, dst):
    """Return a copy of data dir ``src`` in the first layout: one train.bin and one val.bin."""
    m = json.loads((src / "manifest.json").read_text())
    dst.mkdir()
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    for split in ("train", "val"):
        with open(dst / f"{split}.bin", "wb") as f:
            for shard in m["shards"][split]:
                f.write((src / shard["file"]).read_bytes())
    keep = ("dtype", "vocab_size", "eos_token", "eos_id", "max_token_id", "train_tokens", "val_tokens",
            "train_documents", "val_documents", "val_fraction", "seed", "tokenizer_sha256", "replaced_characters",
            "text_field", "sources")
    v1 = {"format": FORMAT_V1, **{k: m[k] for k in keep},
          "train_sha256": sha256_file(dst / "train.bin"), "val_sha256": sha256_file(dst / "val.bin")}
    (dst / "manifest.json").write_text(json.dumps(v1, indent=2))
    return dst


def test_a_v1_data_dir_opens_verifies_and_trains_like_its_sharded_twin(sharded, tiny_cfg, tmp_path, capsys):
    from tstrain.train.loop import train

    v1 = write_v1(sharded, tmp_path / "v1")
    old, new = TokenData(v1), TokenData(sharded)
    assert len(old.train.maps) == 1 and len(new.train.maps) > 5
    assert np.array_equal(np.asarray(old.train), np.asarray(new.train)) and old.verify() == new.verify()
    assert main(["verify-data", str(v1)]) == 0 and "SHA-256 of each of its 2 token files" in capsys.readouterr().out
    flags = {"train.steps": 4, "tst.ratio": 0.5, "train.seq_len": 16, "train.batch_size": 4, "train.eval_every": 2,
             "data.val_windows": 4}
    a = train(tiny_cfg(**flags, **{"data.path": str(v1)}), tmp_path / "run-v1")
    b = train(tiny_cfg(**flags, **{"data.path": str(sharded)}), tmp_path / "run-v2")
    assert a.final_val_loss == b.final_val_loss
    lines = [(tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in ("run-v1", "run-v2")]
    losses = [[row["loss"] for row in map(json.loads, run) if "loss" in row] for run in lines]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_tokens_read_like_one_array_across_shards(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 60000, n).astype(np.uint16) for n in (37, 1, 500, 3, 260)]
    maps = []
    for i, p in enumerate(parts):
        p.tofile(tmp_path / f"{i}.bin")
        maps.append(np.memmap(tmp_path / f"{i}.bin", dtype=np.uint16, mode="r"))
    ref, x = np.concatenate(parts), Tokens(maps)
    n = len(ref)
    assert len(x) == n and x.dtype == np.uint16 and x.shape == (n,) and np.array_equal(np.asarray(x), ref)
    for _ in range(300):
        a, b = sorted(rng.integers(-n - 5, n + 5, 2))
        step = int(rng.choice([1, 1, 2, 7, -1, -3]))
        assert np.array_equal(x[a:b:step], ref[a:b:step]) and np.array_equal(x[a:], ref[a:])
        i = int(rng.integers(-n, n))
        assert x[i] == ref[i]
    for shape in [(50,), (8, 40), (3, 4, 20), (0,), (5, 0)]:  # random ids, and windows as the reader reads them
        idx = rng.integers(-n, n, shape)
        assert np.array_equal(x[idx], ref[idx]) and x[idx].shape == shape
    starts = np.array([0, 30, 36, 37, 38, 500, 536, 537, 800 - 41])  # windows ending in, crossing, spanning shards
    windows = starts[:, None] + np.arange(41)[None, :]
    assert np.array_equal(x[windows], ref[windows])
    inside = np.array([40, 100, 300])[:, None] + np.arange(41)[None, :]  # all in one shard: the fast path
    assert np.array_equal(x[inside], ref[inside])
    for bad in (np.array([n]), np.array([[0, -n - 1]])):
        with pytest.raises(IndexError):
            x[bad]
    with pytest.raises(IndexError):
        x[np.array([0.5])]


def test_verify_names_each_corrupt_shard(sharded, tmp_path, capsys):
    d = shutil.copytree(sharded, tmp_path / "d")
    arr = np.memmap(d / "train-00002.bin", dtype=np.uint16, mode="r+")
    arr[3] = 7 if arr[3] != 7 else 8  # an id inside the vocabulary: only the hash sees it
    arr.flush()
    TokenData(d)  # opening reads no token
    with pytest.raises(DataError, match=r"train-00002.bin does not match the SHA-256 in the manifest") as e:
        TokenData(d).verify(chunk=100)
    assert "train-00001.bin" not in str(e.value) and "train-00003.bin" not in str(e.value)
    val = np.memmap(d / "val-00001.bin", dtype=np.uint16, mode="r+")
    val[0] = 40000
    val.flush()
    assert main(["verify-data", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 token files are corrupt" in err and "train-00002.bin does not match" in err
    assert "val-00001.bin contains token id 40000, outside the tokenizer's vocabulary of 320" in err


def test_opening_trusts_the_manifest_and_reads_no_token(sharded, tmp_path, monkeypatch):
    from tstrain.data import tokens as data_module

    d = shutil.copytree(sharded, tmp_path / "d")
    for f in d.glob("*-*.bin"):  # every token replaced by one outside the vocabulary, sizes kept
        np.full(f.stat().st_size // 2, 65535, dtype=np.uint16).tofile(f)
    hashed = []
    monkeypatch.setattr(data_module, "sha256_file", lambda p: hashed.append(p.name) or sha256_file(p))
    data = TokenData(d)
    assert hashed == ["tokenizer.json"] and len(data.train) == data.manifest["train_tokens"]
    with pytest.raises(DataError, match="token files are corrupt"):
        data.verify()
    m = json.loads((d / "manifest.json").read_text())
    m["shards"]["train"][1]["tokens"] += 1  # a manifest that no longer adds up
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="the manifest is corrupt"):
        TokenData(d)


def test_windows_across_shards_are_what_one_file_gives(sharded, tiny_cfg, tmp_path):
    from tstrain.data.reader import WindowReader, WindowSchedule, validation_windows

    one, many = TokenData(write_v1(sharded, tmp_path / "v1")), TokenData(sharded)
    cfg = tiny_cfg(**{"data.path": str(sharded), "train.steps": 40, "tst.ratio": 0.5}).resolved_for(many.vocab_size)
    readers = [WindowReader(d.train, WindowSchedule.for_run(cfg.schedule), cfg.train.seed) for d in (one, many)]
    for step in (0, 7, 19, 20, 33):
        for (s1, rows1), (s2, rows2) in zip(readers[0].pieces(step), readers[1].pieces(step)):
            assert s1 == s2 and np.array_equal(rows1.numpy(), rows2.numpy())
    assert np.array_equal(validation_windows(one.val, 16, 20).numpy(), validation_windows(many.val, 16, 20).numpy())


def test_the_manifest_names_the_text_by_a_corpus_hash_that_follows_the_text_not_the_path(corpus, data_dir, tmp_path):
    moved = tmp_path / "elsewhere" / "c.txt"
    moved.parent.mkdir()
    shutil.copyfile(corpus, moved)
    edited = tmp_path / "edited.txt"
    edited.write_text(corpus.read_text() + "the old lion sat on the mat.\n")
    hashes = [prepare(text, data_dir, tmp_path / name)["corpus_sha256"]
              for name, text in (("a", corpus), ("b", moved), ("c", edited))]
    assert hashes[0] == hashes[1] and hashes[0] != hashes[2] and len(hashes[0]) == 64
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["sources"][0]["sha256"] == sha256_file(corpus)
