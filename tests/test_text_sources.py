"""Inputs as the field ships them: compressed JSON lines, another text field, dirs and globs,
a Hugging Face datasets directory, and a Hugging Face tokenizer directory."""

import gzip
import json

import pyarrow as pa
import pytest

from tstrain.data.prepare import PrepareOptions, prepare_data
from tstrain.data.text_sources import expand_inputs, iter_documents
from tstrain.data.tokenizer import train_bpe_tokenizer
from tstrain.data.tokens import TokenData
from tstrain.errors import DataError

DOCS = [f"document {i}: the cat sat on the mat and the dog ran home {i % 7}" for i in range(60)]


def test_every_format_yields_the_same_documents(tmp_path):
    lines = "".join(json.dumps({"body": d}) + "\n" for d in DOCS)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    assert list(iter_documents([tmp_path / "a.jsonl.gz"], text_field="body")) == DOCS
    with pytest.raises(DataError, match="is not a JSON object with a 'text' field"):
        list(iter_documents([tmp_path / "a.jsonl.gz"]))
    hf = tmp_path / "hf-dataset"  # what datasets' save_to_disk writes: Arrow IPC streams and its info files
    (hf / "train").mkdir(parents=True)
    (hf / "train" / "dataset_info.json").write_text("{}")
    table = pa.table({"body": DOCS, "id": list(range(60))})
    with pa.OSFile(str(hf / "train" / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    assert list(iter_documents([hf / "train"], text_field="body")) == DOCS
    with pytest.raises(DataError, match="has no 'text' column .* --text-field"):
        list(iter_documents([hf / "train"]))


def test_directories_and_globs_stand_for_their_files_in_order(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_text(name)
    (tmp_path / "in" / "notes.csv").write_text("skipped: not a supported kind")
    assert [p.name for p in expand_inputs([tmp_path / "in"])] == ["a.txt", "b.txt", "c.txt"]
    assert [p.name for p in expand_inputs([str(tmp_path / "in" / "*.txt")])] == ["a.txt", "b.txt"]
    with pytest.raises(DataError, match="matches no file"):
        expand_inputs([str(tmp_path / "none" / "*.jsonl")])


def test_prepare_data_takes_a_hugging_face_tokenizer_dir_and_its_eos(tmp_path):
    tok = train_bpe_tokenizer(DOCS * 5, 300, eos_token="<eot>", progress=False)
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<eot>"}}))
    (tmp_path / "docs").mkdir()
    for i in range(0, 60, 10):
        part = "".join(json.dumps({"text": d}) + "\n" for d in DOCS[i:i + 10])
        (tmp_path / "docs" / f"part{i}.jsonl").write_text(part)
    m = prepare_data([tmp_path / "docs"], tmp_path / "data", PrepareOptions(tokenizer=tmp_path / "tok",
                     val_fraction=0.2, progress=False))
    assert m["eos_token"] == "<eot>" and m["eos_id"] == tok.token_to_id("<eot>")
    assert m["train_documents"] + m["val_documents"] == 60 and len(m["sources"]) == 6
    assert TokenData(tmp_path / "data").verify()["train"] < m["vocab_size"]
