"""Model families, the paper-shape presets against published sizes, MoE accounting and router loss."""

import dataclasses
import json
import math

import pytest
import torch

from tstrain.batches import Piece
from tstrain.cli import main
from tstrain.config import ConfigError, ModelConfig, load_config, preset_names
from tstrain.loss import TSTLoss
from tstrain.model_parts import CausalLMParts
from tstrain.models import build_model, count_parameters, flops_per_position, hf_config, model_info

LLAMA3_VOCAB = 128256


def published(preset, **reference):
    """The preset's shape with the published model's vocabulary and tying, built on the meta device."""
    m = dataclasses.replace(load_config(preset).model, **reference)
    return count_parameters(build_model(m, m.vocab_size, 2048, device="meta"))


# Published parameter counts (Hugging Face model cards): SmolLM2-135M 135M and SmolLM2-360M 362M
# (both vocabulary 49,152, tied embeddings), SmolLM3-3B 3.08B (vocabulary 128,256, tied).
@pytest.mark.parametrize(
    "preset, vocab, size",
    [("smollm2-135m", 49152, 135e6), ("smollm2-360m", 49152, 362e6), ("smollm3-3b", LLAMA3_VOCAB, 3.08e9)],
)
def test_dense_presets_have_the_published_shapes(preset, vocab, size):
    ref = published(preset, vocab_size=vocab, tie_embeddings=True)
    assert ref["total"] == pytest.approx(size, rel=0.02)
    # The preset is that shape with the paper's changes only: a Llama-3 vocabulary and an untied head.
    ours = published(preset)
    m = load_config(preset).model
    assert (m.vocab_size, m.tie_embeddings, m.family) == (LLAMA3_VOCAB, False, "llama")
    assert ours["total"] == ref["total"] + (2 * LLAMA3_VOCAB - vocab) * m.hidden_size
    assert ours["active"] == ours["total"]


def test_qwen3_moe_counts_active_parameters_like_the_published_qwen3_30b_a3b():
    # Qwen3-30B-A3B (model card: 30.5B total, 3.3B activated): the expert layout the MoE preset uses.
    qwen = dict(family="qwen3_moe", hidden_size=2048, num_layers=48, num_heads=32, num_kv_heads=4, head_dim=128,
                num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, tie_embeddings=False)
    counts = count_parameters(build_model(ModelConfig(**qwen), 151936, 2048, device="meta"))
    assert counts["total"] == pytest.approx(30.5e9, rel=0.02)
    assert counts["active"] == pytest.approx(3.3e9, rel=0.02)


def test_moe_preset_is_about_10b_total_and_1b_active():
    m = load_config("qwen3-moe-10b-a1b").model
    assert m.family == "qwen3_moe" and m.vocab_size == LLAMA3_VOCAB and not m.tie_embeddings
    counts = count_parameters(build_model(m, m.vocab_size, 2048, device="meta"))
    assert counts["total"] == pytest.approx(10e9, rel=0.05)
    assert counts["active"] == pytest.approx(1e9, rel=0.05)


def test_active_parameters_and_flops_follow_the_experts_a_position_uses():
    cfg = load_config("tiny-qwen3-moe")
    m = cfg.model
    model = build_model(m, 320, 32)
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    expert = 3 * m.hidden_size * m.moe_intermediate_size  # gate, up and down projections of one expert
    idle = m.num_layers * (m.num_experts - m.num_experts_per_tok) * expert
    assert counts["active"] == counts["total"] - idle
    assert counts["embedding"] == 320 * m.hidden_size  # untied: only the input table is a lookup
    attention = 12 * m.num_layers * m.num_heads * m.head_dim * 32
    vectors = sum(p.numel() for p in model.parameters() if p.dim() < 2)  # norm weights multiply nothing
    assert flops_per_position(model, 32) == 6 * (counts["active"] - counts["embedding"] - vectors) + attention


def test_big_models_are_built_on_the_meta_device_and_info_needs_no_memory(capsys):
    cfg = load_config("qwen3-moe-10b-a1b")
    model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    info = model_info(cfg.model, cfg.model.vocab_size, cfg.train.seq_len)
    total = info["parameters"]["total"]
    assert info["memory_bytes"]["training_total"] == 16 * total  # fp32 weights, gradients, two AdamW moments
    assert info["flops_per_token"] < 6 * total / 5  # counted on active experts only
    assert main(["info", "--preset", "qwen3-moe-10b-a1b"]) == 0
    out = capsys.readouterr().out
    assert f"{total:,} total" in out and "active per token" in out and "AdamW" in out
    assert main(["info", "--preset", "tiny", "--json", "--vocab-size", "256"]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 256


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe", "mistral", "gpt2"])
def test_every_family_builds_from_our_fields(family):
    extra = {"num_kv_heads": 4} if family == "gpt2" else {}
    if family == "qwen3_moe":
        extra = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
    m = load_config("tiny", overrides={"model.family": family, **{f"model.{k}": v for k, v in extra.items()}}).model
    model = build_model(m, 96, 16)
    assert model.config.model_type == family
    parts = CausalLMParts(model)
    hidden = parts.hidden_states(input_ids=torch.randint(0, 96, (2, 16)))
    assert parts.logits(hidden).shape == (2, 16, 96)
    assert parts.is_moe == (family == "qwen3_moe")


def test_config_file_defines_the_architecture_and_the_data_the_vocabulary(tmp_path):
    from transformers import MistralConfig

    path = tmp_path / "config.json"
    MistralConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, vocab_size=1000,
                  eos_token_id=999).to_json_file(path)
    m = load_config("tiny", overrides={"model.config_file": str(path)}).model
    config = hf_config(m, 320, 32)
    assert ((config.model_type, config.hidden_size, config.num_hidden_layers, config.vocab_size)
            == ("mistral", 48, 3, 320))
    assert config.eos_token_id is None  # the file's id lies outside our vocabulary
    assert hf_config(m, 0, 32).vocab_size == 1000  # `info` without data keeps the file's vocabulary
    with pytest.raises(ConfigError, match="fewer than train.seq_len=128"):
        hf_config(m, 320, 128)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.family": "bert"}, "model.family must be one of"),
        ({"model.family": "gpt2"}, "gpt2 has no grouped-query attention"),
        ({"model.family": "qwen3_moe"}, "qwen3_moe needs model.num_experts >= 1"),
        ({"model.config_file": "/nonexistent/config.json"},
         "does not exist; pass the path of a Hugging Face config.json"),
    ],
)
def test_bad_model_values_name_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=overrides)


def test_all_presets_validate():
    for name in preset_names():
        load_config(name)


def test_router_loss_is_transformers_own_times_the_coefficient_in_both_phases():
    cfg = load_config("tiny-qwen3-moe", overrides={"model.router_aux_loss_coef": 0.5})
    torch.manual_seed(0)
    model = build_model(cfg.model, 320, cfg.train.seq_len)
    parts = CausalLMParts(model)
    ids = torch.randint(0, 320, (2, cfg.train.seq_len))
    hidden, aux = parts.hidden_states_and_aux_loss(input_ids=ids)
    reference = model(input_ids=ids, output_router_logits=True)  # the model's own forward
    assert torch.allclose(aux, 0.5 * reference.aux_loss)
    assert torch.allclose(parts.logits(hidden), reference.logits)

    s, L = cfg.tst.bag_size, cfg.train.seq_len
    window = torch.randint(0, 320, (2, (L + 1) * s))
    loss = TSTLoss(parts)
    for piece in (Piece(cfg.schedule.group(s, 2), window), Piece(cfg.schedule.group(1, 2), window[:, :L + 1])):
        with_aux = loss(piece)
        parts.aux_coef = 0.0
        without = loss(piece)
        parts.aux_coef = 0.5
        assert with_aux.item() > without.item() > 0
        model.zero_grad()
        (with_aux - without).backward()  # the router loss alone trains the routers, phase 1 included
        routers = [p.grad for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")]
        assert routers and all(g is not None and g.abs().sum() > 0 for g in routers)

    dense = CausalLMParts(build_model(load_config("tiny").model, 320, 32))
    assert dense.hidden_states_and_aux_loss(input_ids=ids)[1] is None
    assert math.isfinite(TSTLoss(dense)(Piece(cfg.schedule.group(s, 2), window)).item())


@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-qwen3-moe"])  # tiny-llama: test_export's run
def test_tiny_family_presets_train_through_both_phases(preset, data_dir, tmp_path):
    from tstrain.train.loop import train
    from tstrain.train.metrics import read_jsonl

    cfg = load_config(preset, overrides={"data.path": str(data_dir), "log.progress": False, "train.steps": 12,
                                         "train.eval_every": 6})
    summary = train(cfg, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert {r["phase"] for r in rows if "loss" in r} == {1, 2} and summary.switch_step == 4
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < val[0]
