"""Measuring a saved model: the next-token loss on the validation windows, refusals in one line, lm-eval's rows."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tstrain.config import load_config
from tstrain.data.reader import validation_windows
from tstrain.data.tokens import TokenData
from tstrain.errors import CheckpointError, ConfigError, DataError
from tstrain.evaluation import check_same_tokenizer, evaluate, result_rows, run_lm_eval
from tstrain.models import build_model

SEQ_LEN = 16


def save_model(path, vocab_size, seed=0):
    """Save a freshly initialised tiny Llama as a Hugging Face model dir (no tokenizer files); return it."""
    torch.manual_seed(seed)
    model = build_model(load_config("tiny-llama").model, vocab_size, SEQ_LEN)
    model.save_pretrained(path)
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "model"
    return path, save_model(path, TokenData(data_dir).vocab_size)


def plain_loss(model, windows):
    """The mean next-token cross entropy over ``windows`` (n, L + 1), in float64, one window at a time."""
    losses = []
    with torch.no_grad():
        for w in windows:
            logits = model(input_ids=w[None, :-1]).logits[0].double()
            losses.append(F.cross_entropy(logits, w[1:], reduction="none"))
    return torch.cat(losses).mean().item()


def test_eval_gives_the_mean_next_token_loss_of_the_validation_windows(model_dir, data_dir):
    path, model = model_dir
    want = plain_loss(model, validation_windows(TokenData(data_dir).val, SEQ_LEN, 12))
    for batch_size in (1, 5, 16):  # the windows' batching changes nothing
        got = evaluate(path, data_dir, windows=12, batch_size=batch_size)  # seq_len: the model's positions
        assert got["loss"] == pytest.approx(want, abs=1e-5)
        assert got["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
        assert (got["windows"], got["seq_len"], got["tokens"]) == (12, SEQ_LEN, 12 * SEQ_LEN)
    assert evaluate(path, data_dir, seq_len=8, windows=3)["tokens"] == 24
    assert evaluate(path, data_dir)["windows"] == 64  # a bare model dir: 64 windows unless asked


@pytest.mark.parametrize(("kwargs", "error", "fragment"), [
    ({"seq_len": SEQ_LEN + 1}, ConfigError, f"exceeds the model's {SEQ_LEN} positions"),
    ({"windows": -1}, ConfigError, "--windows must be >= 0"),
    ({"batch_size": 0}, ConfigError, "--batch-size >= 1"),
])
def test_eval_refuses_settings_that_cannot_be_measured_in_one_line(model_dir, data_dir, kwargs, error, fragment):
    with pytest.raises(error) as refused:
        evaluate(model_dir[0], data_dir, **kwargs)
    assert fragment in str(refused.value) and "\n" not in str(refused.value)


def test_eval_refuses_data_whose_vocabulary_the_model_does_not_cover(data_dir, tmp_path):
    save_model(tmp_path / "small", 100)
    with pytest.raises(DataError, match="uses a vocabulary of .* but the model has 100"):
        evaluate(tmp_path / "small", data_dir, windows=2)


def test_the_models_tokenizer_must_be_the_datas(data_dir, tmp_path):
    data = TokenData(data_dir)
    check_same_tokenizer(data_dir / "tokenizer.json", data)  # the same: nothing raised
    check_same_tokenizer(None, data)  # a model dir without one: nothing to compare
    other = json.loads((data_dir / "tokenizer.json").read_text())
    vocab = other["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[-2:]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two ids swapped: other text for the same ids
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(DataError, match="prepared with another tokenizer than the model's"):
        check_same_tokenizer(tmp_path / "other.json", data)
    (tmp_path / "cut.json").write_text((data_dir / "tokenizer.json").read_text()[:100])
    with pytest.raises(DataError, match="cut short or corrupt"):
        check_same_tokenizer(tmp_path / "cut.json", data)


def test_lm_eval_refuses_bad_settings_and_a_dir_that_is_no_model_before_loading_it(tmp_path):
    with pytest.raises(ConfigError, match="--batch-size must be >= 1"):
        run_lm_eval(tmp_path, ["tstrain_smoke_mc"], batch_size=0)
    with pytest.raises(ConfigError, match="--limit > 0"):
        run_lm_eval(tmp_path, ["tstrain_smoke_mc"], limit=0)
    with pytest.raises(CheckpointError, match="is not a Hugging Face model dir"):
        run_lm_eval(tmp_path, ["tstrain_smoke_mc"])


def test_lm_eval_results_become_one_row_per_task_and_metric_with_its_stderr():
    results = {"results": {
        "hellaswag": {"alias": "hellaswag", "acc,none": 0.25, "acc_stderr,none": 0.01, "acc_norm,none": 0.5,
                      "acc_norm_stderr,none": "N/A"},
        "arc_easy": {"acc,none": 1, "sample_len": 7},
    }}
    assert result_rows(results) == [("hellaswag", "acc", 0.25, 0.01), ("hellaswag", "acc_norm", 0.5, None),
                                    ("arc_easy", "acc", 1.0, None)]
