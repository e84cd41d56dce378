"""prepare-data output and the deterministic windowed reader."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from tstrain.data.prepare import PrepareOptions, prepare_data
from tstrain.data.text_sources import iter_documents
from tstrain.data.tokens import DataError, TokenData


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
    prepare_data([src], out, PrepareOptions(train_tokenizer=300, val_fraction=0.1, progress=False))
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

    pq.write_table(pa.table({"text": [f"the cat sat on mat {i}" for i in range(200)], "id": list(range(200))}),
                   tmp_path / "t.parquet")
    m = prepare_data([tmp_path / "t.parquet"], tmp_path / "out",
                     PrepareOptions(tokenizer=data_dir / "tokenizer.json", val_fraction=0.1, progress=False))
    assert m["tokenizer_sha256"] == json.loads((data_dir / "manifest.json").read_text())["tokenizer_sha256"]
    assert m["train_documents"] + m["val_documents"] == 200


def test_bad_inputs_give_clear_errors(tmp_path, data_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 is not a JSON object with a 'text' field"):
        prepare_data([bad], tmp_path / "o", PrepareOptions(tokenizer=data_dir / "tokenizer.json", progress=False))
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


def test_truncated_shard_at_open_and_out_of_range_ids_by_verify_are_detected(data_dir, tmp_path, capsys):
    from tstrain.cli import main

    d = copy_data(data_dir, tmp_path / "trunc")
    with open(d / "train-00000.bin", "r+b") as f:
        f.truncate((d / "train-00000.bin").stat().st_size - 6)
    with pytest.raises(DataError, match="train-00000.bin holds .* truncated or corrupt"):
        TokenData(d)
    d = copy_data(data_dir, tmp_path / "range")
    arr = np.memmap(d / "train-00000.bin", dtype=np.uint16, mode="r+")
    arr[5] = 40000
    arr.flush()
    TokenData(d)  # opening reads no token: O(1) in the data's size
    with pytest.raises(DataError, match="token id 40000, outside the tokenizer's vocabulary of 320"):
        TokenData(d).verify(chunk=1000)
    assert main(["verify-data", str(d)]) == 2 and "token id 40000" in capsys.readouterr().err
    arr[5] = 7  # an id inside the vocabulary, but not the one written: only the hash sees it
    arr.flush()
    with pytest.raises(DataError, match="does not match the SHA-256"):
        TokenData(d).verify()
    assert main(["verify-data", str(data_dir)]) == 0 and "verified" in capsys.readouterr().out
