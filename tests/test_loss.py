"""``TSTLoss``'s contract with a model: a causal decoder, a body that returns hidden states (or hidden
states and a scalar extra loss), ids inside its vocabulary."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import tstrain
from tstrain.batches import Piece
from tstrain.config import load_config
from tstrain.errors import ConfigTypeError, DataError
from tstrain.models import build_model
from tstrain.superposition import reference_multi_hot_cross_entropy

VOCAB, WIDTH = 50, 16


def batch(step=0, vocab=VOCAB, ratio=0.5, **given):
    sch = tstrain.Schedule(steps=4, batch_size=4, seq_len=8, bag_size=2, ratio=ratio)
    return tstrain.BatchMaker(np.random.default_rng(0).integers(0, vocab, 4000), sch, **given).batch(step)


class GRUModel(nn.Module):
    """A small recurrent language model: causal by construction (or not, when bidirectional)."""

    def __init__(self, bidirectional=False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.rnn = nn.GRU(WIDTH, WIDTH // (2 if bidirectional else 1), batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)


def test_a_causal_recurrent_body_trains_in_both_phases():
    m = GRUModel()
    loss = tstrain.TSTLoss(embedding=m.embed, body=lambda x: m.rnn(x)[0], head=m.head)
    for step in (0, 3):
        value = loss(batch(step))
        value.backward()
        assert value.ndim == 0 and torch.isfinite(value)


def test_a_body_that_sees_later_positions_is_refused_at_the_first_batch():
    m = GRUModel(bidirectional=True)
    loss = tstrain.TSTLoss(embedding=m.embed, body=lambda x: m.rnn(x)[0], head=m.head)
    with pytest.raises(ConfigTypeError, match="the model is not causal: its hidden states at positions 0..3"):
        loss(batch(0))
    unchecked = tstrain.TSTLoss(embedding=m.embed, body=lambda x: m.rnn(x)[0], head=m.head, check_causal=False)
    assert torch.isfinite(unchecked(batch(0)))


def test_the_causal_probe_leaves_the_random_state_and_the_numbers_as_they_were():
    m = GRUModel()
    dropout = nn.Dropout(0.5)
    body = lambda x: dropout(m.rnn(x)[0])  # noqa: E731  dropout: the probe's two runs must share their masks
    torch.manual_seed(3)
    checked = tstrain.TSTLoss(embedding=m.embed, body=body, head=m.head)(batch(0))
    after_checked = torch.rand(3)
    torch.manual_seed(3)
    unchecked = tstrain.TSTLoss(embedding=m.embed, body=body, head=m.head, check_causal=False)(batch(0))
    assert checked.item() == unchecked.item() and torch.equal(after_checked, torch.rand(3))


def test_a_masked_language_model_is_refused():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    model = transformers.BertForMaskedLM(config)
    with pytest.raises(ConfigTypeError, match="not causal"):
        tstrain.TSTLoss(model)(batch(0))


def test_a_causal_lm_passes_the_probe():
    model = build_model(load_config("tiny").model, VOCAB, 8)
    assert torch.isfinite(tstrain.TSTLoss(model)(batch(0)))


def test_an_rnn_given_as_the_body_is_refused_with_how_to_wrap_it():
    m = GRUModel()
    loss = tstrain.TSTLoss(embedding=m.embed, body=m.rnn, head=m.head)
    with pytest.raises(ConfigTypeError, match=r"body=lambda x: rnn\(x\)\[0\]"):
        loss(batch(0))


@pytest.mark.parametrize("body", [lambda x: (x, torch.ones(2)), lambda x: (x, x, x), lambda x: x[:, :3],
                                  lambda x: x.sum(-1), lambda x: [x]])
def test_a_body_that_returns_anything_but_hidden_states_or_hidden_and_a_scalar_is_refused(body):
    m = GRUModel()
    with pytest.raises(ConfigTypeError, match="a body returns hidden states"):
        tstrain.TSTLoss(embedding=m.embed, body=body, head=m.head, check_causal=False)(batch(0))


def test_a_body_with_a_scalar_extra_loss_adds_it():
    m = GRUModel()
    plain = tstrain.TSTLoss(embedding=m.embed, body=lambda x: m.rnn(x)[0], head=m.head)(batch(0))
    extra = tstrain.TSTLoss(embedding=m.embed, body=lambda x: (m.rnn(x)[0], torch.tensor(0.25)), head=m.head)
    assert extra(batch(0)).item() == pytest.approx(plain.item() + 0.25)


def test_a_model_that_is_not_a_causal_lm_points_to_its_three_parts():
    with pytest.raises(ConfigTypeError, match=r"give its parts instead, TSTLoss\(embedding=\.\.\., body=\.\.\., "):
        tstrain.TSTLoss(GRUModel())


def test_ids_beyond_the_models_vocabulary_are_refused_when_no_batch_maker_checked_them():
    m = GRUModel()
    loss = tstrain.TSTLoss(embedding=m.embed, body=lambda x: m.rnn(x)[0], head=m.head)
    with pytest.raises(DataError, match=r"outside the model's vocabulary \[0, 50\)"):
        loss(batch(0, vocab=80))
    with pytest.raises(DataError, match=r"outside the model's vocabulary \[0, 50\)"):
        loss(batch(0, vocab=80, vocab_size=80))  # checked, but against a larger vocabulary than the model's


def test_train_refuses_a_model_config_that_is_not_causal_in_one_line(data_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "bert.json"
    transformers.BertConfig(vocab_size=384, hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=64).to_json_file(path)
    done = subprocess.run([sys.executable, "-m", "tstrain", "train", "--preset", "tiny", "--data", str(data_dir),
                           "--out", str(tmp_path / "run"), "--steps", "4", "--set", f"model.config_file={path}",
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the model is not causal" in done.stderr
    assert not (tmp_path / "run" / "final").exists()


def reference_loss(model, group, windows):
    """The loss written out plainly: bag ids by index, the mean embedding, the model, s cross entropies."""
    L, s = group.positions, group.bag_size
    variant = group.variant or "both"
    emb = model.get_input_embeddings().weight
    if variant in ("both", "input") and s > 1:
        bags = torch.stack([windows[:, j * s:(j + 1) * s] for j in range(L)], dim=1)  # (B, L, s)
        embeds = emb[bags].double().mean(dim=2).float()
    else:
        embeds = emb[windows[:, :L]]
    logits = model(inputs_embeds=embeds).logits
    if s == 1:
        targets = windows[:, 1:L + 1, None]
    elif variant == "both":
        targets = torch.stack([windows[:, (j + 1) * s:(j + 2) * s] for j in range(L)], dim=1)
    elif variant == "input":
        targets = torch.stack([windows[:, (j + 1) * s] for j in range(L)], dim=1)[..., None]
    else:
        targets = torch.stack([windows[:, j + 1:j + 1 + s] for j in range(L)], dim=1)
    k = targets.shape[-1]
    return reference_multi_hot_cross_entropy(logits, targets, torch.full((k,), 1.0 / k, dtype=torch.float64))


@pytest.mark.parametrize("variant", ["both", "input", "output"])
@pytest.mark.parametrize("bag_size", [1, 3])
def test_the_loss_of_a_piece_equals_the_written_out_reference(variant, bag_size):
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg.model, 97, 8)
    group = tstrain.Schedule(steps=4, batch_size=3, seq_len=8, bag_size=bag_size, ratio=0.5,
                             variant=variant).plan(0)[0]
    windows = torch.randint(0, 97, (3, group.window))
    ours = tstrain.TSTLoss(model)(Piece(group, windows))
    assert ours.item() == pytest.approx(reference_loss(model, group, windows).item(), rel=1e-5)


def test_the_loss_of_three_callables_equals_the_loss_of_the_causal_lm():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg.model, 97, 8)
    parts = dict(embedding=model.model.embed_tokens, head=model.lm_head,
                 body=lambda e: model.model(inputs_embeds=e).last_hidden_state)
    sch = tstrain.Schedule(steps=4, batch_size=3, seq_len=8, bag_size=4, ratio=0.5, transition="blend",
                           transition_steps=2)
    batch = tstrain.BatchMaker(np.random.default_rng(0).integers(0, 97, 4000), sch).batch(2)  # bags and tokens
    assert len(batch.pieces) == 2
    a = tstrain.TSTLoss(model, weights="power")(batch)
    b = tstrain.TSTLoss(**parts, weights="power")(batch)
    c = tstrain.TSTLoss(**parts, weights="power", fused="on", chunk_size=5)(batch)
    assert a.item() == b.item() == pytest.approx(c.item(), rel=1e-5)
    ga = torch.autograd.grad(a, model.lm_head.weight)[0]
    gc = torch.autograd.grad(c, model.lm_head.weight)[0]
    assert torch.allclose(ga, gc, atol=1e-6)
    with pytest.raises(ValueError, match="either a causal LM"):
        tstrain.TSTLoss(model, embedding=model.model.embed_tokens)


def test_the_embedding_may_be_given_as_a_bare_weight_even_a_non_leaf_view():
    torch.manual_seed(0)
    model = build_model(load_config("tiny").model, 97, 8)
    body = lambda e: model.model(inputs_embeds=e).last_hidden_state  # noqa: E731
    sch = tstrain.Schedule(steps=4, batch_size=8, seq_len=8, bag_size=4, ratio=0.5)
    batch = tstrain.BatchMaker(np.random.default_rng(0).integers(0, 97, 4000), sch).batch(0)
    module = tstrain.TSTLoss(embedding=model.model.embed_tokens, body=body, head=model.lm_head)(batch)
    view = model.model.embed_tokens.weight * 1.0  # a non-leaf tensor, as a sharded weight's local view is
    bare = tstrain.TSTLoss(embedding=view, body=body, head=model.lm_head)(batch)
    assert bare.item() == module.item()
    bare.backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0  # the gradient reaches the weight through the view
