"""Activation checkpointing: each decoder layer recomputes its forward in backward, same numbers, same names."""

import torch

from tstrain.config import load_config
from tstrain.model_parts import CausalLMParts
from tstrain.models import build_model
from tstrain.superposition import IGNORE_INDEX, linear_multi_hot_cross_entropy
from tstrain.train.activation_checkpointing import checkpoint_activations
from tstrain.train.loop import train
from tstrain.train.metrics import read_jsonl

TIMING_KEYS = {"wall_time", "tokens_per_s", "positions_per_s", "mfu"}


def tiny_model(seed=0):
    cfg = load_config("tiny", overrides={"model.vocab_size": 97})
    torch.manual_seed(seed)
    return build_model(cfg.model, 97, 16)


def loss_and_grads(model, ids):
    parts = CausalLMParts(model)
    hidden = parts.hidden_states(input_ids=ids[:, :-1])
    targets = ids[:, 1:, None].clone()
    targets[0, :3] = IGNORE_INDEX
    loss = linear_multi_hot_cross_entropy(hidden, parts.head.weight, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def saved_elements(model, ids) -> int:
    """Return how many tensor elements autograd keeps from one forward for the backward pass."""
    kept = []

    def pack(x):
        kept.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        hidden = CausalLMParts(model).hidden_states(input_ids=ids)
    hidden.sum().backward()
    return sum(kept)


def test_checkpointed_layers_keep_fewer_activations_and_give_identical_gradients():
    ids = torch.randint(0, 97, (3, 17), generator=torch.Generator().manual_seed(1))
    plain, recomputing = tiny_model(), tiny_model()
    names = [n for n, _ in recomputing.named_parameters()]
    checkpoint_activations(recomputing)
    want, want_grads = loss_and_grads(plain, ids)
    got, got_grads = loss_and_grads(recomputing, ids)
    assert torch.equal(got, want)
    assert [n for n, _ in recomputing.named_parameters()] == names  # checkpoints load either way
    assert got_grads.keys() == want_grads.keys() and all(torch.equal(got_grads[n], want_grads[n]) for n in names)
    # Inside a checkpointed layer nothing is kept but its inputs: far less than the plain model keeps.
    assert saved_elements(recomputing, ids) < 0.5 * saved_elements(tiny_model(), ids)


def test_a_run_with_activation_checkpointing_logs_the_same_numbers(tiny_cfg, tmp_path):
    flags = {"tst.ratio": 0.5, "train.steps": 12}
    train(tiny_cfg(**flags), tmp_path / "plain")
    train(tiny_cfg(**flags, **{"train.activation_checkpointing": "full"}), tmp_path / "recompute")
    rows = [[{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(tmp_path / run / "metrics.jsonl")]
            for run in ("plain", "recompute")]
    assert rows[0] == rows[1] and any("loss" in r for r in rows[0])
