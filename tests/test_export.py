"""A trained model is a standard Hugging Face checkpoint: export, reload, generate, evaluate, lm-eval."""

import json
import math

import pytest
import torch
from safetensors.torch import load_model

from tstrain.cli import main
from tstrain.config import load_config
from tstrain.evaluation import evaluate
from tstrain.inference import generate
from tstrain.model_io import export
from tstrain.models import build_model
from tstrain.train.checkpoint import CheckpointError, list_checkpoints
from tstrain.train.loop import train


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """A short two-phase run of the tiny Llama with a checkpoint in each phase."""
    cfg = load_config("tiny-llama", overrides={"data.path": str(data_dir), "log.progress": False, "train.steps": 8,
                                               "train.eval_every": 4, "train.checkpoint_every": 2})
    out = tmp_path_factory.mktemp("export") / "run"
    summary = train(cfg, out)
    return out, load_config(config_file=out / "config.toml"), summary  # the resolved config the run saved


def checkpoint_logits(cfg, checkpoint, ids):
    """Logits of the weights a checkpoint holds, in the model the trainer builds (the trained model)."""
    model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len)
    load_model(model, str(checkpoint / "model.safetensors"), strict=True)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def hf_logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_export_round_trip_gives_the_trained_logits_and_tokenizer(run, data_dir, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    out, cfg, _ = run
    ids = torch.randint(0, 300, (2, cfg.train.seq_len))
    ckpts = list_checkpoints(out / "checkpoints")
    assert main(["export", str(out), "--out", str(tmp_path / "final")]) == 0  # the run: its final model
    assert torch.equal(hf_logits(tmp_path / "final", ids), checkpoint_logits(cfg, ckpts[-1], ids))
    early = ckpts[0]  # a phase-1 checkpoint, rebuilt from RUN/config.toml
    export(early, tmp_path / "early")
    early_logits = hf_logits(tmp_path / "early", ids)
    assert torch.equal(early_logits, checkpoint_logits(cfg, early, ids))
    assert not torch.equal(early_logits, checkpoint_logits(cfg, ckpts[-1], ids))

    trained = Tokenizer.from_file(str(data_dir / "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "final")
    text = "the big cat sat on the mat. The old dog ran near the river!"
    assert tok(text)["input_ids"] == trained.encode(text).ids
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert tok.eos_token_id == manifest["eos_id"]
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["eos_token_id"] == manifest["eos_id"]

    with pytest.raises(CheckpointError, match="not empty"):
        export(out, tmp_path / "final")
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_generate_greedy_is_deterministic_and_sampling_repeats_with_its_seed(run, tmp_path, capsys):
    from transformers import AutoTokenizer

    out, _, _ = run
    model_dir = export(out, tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = "the big cat"
    greedy = generate(model_dir, prompt, max_new_tokens=6, greedy=True)
    assert greedy.startswith(prompt) and greedy == generate(model_dir, prompt, max_new_tokens=6, greedy=True)
    assert len(tok(greedy)["input_ids"]) <= len(tok(prompt)["input_ids"]) + 6
    sampled = [generate(model_dir, prompt, max_new_tokens=8, temperature=0.9, top_p=0.9, seed=s) for s in (1, 1)]
    assert sampled[0] == sampled[1]
    assert main(["generate", str(out), "--prompt", prompt, "--max-new-tokens", "6", "--greedy"]) == 0  # run dir: final/
    assert capsys.readouterr().out.strip() == greedy.strip()
    assert main(["generate", str(model_dir), "--prompt", "", "--greedy"]) == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_eval_reports_the_trainers_validation_loss_and_perplexity(run, data_dir, tmp_path, capsys):
    out, cfg, summary = run
    model_dir = export(out, tmp_path / "model")
    result = evaluate(model_dir, data_dir, seq_len=cfg.train.seq_len, windows=cfg.data.val_windows)
    assert result["loss"] == pytest.approx(summary.final_val_loss, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["windows"] == cfg.data.val_windows and result["seq_len"] == cfg.train.seq_len
    assert main(["eval", str(model_dir), "--data", str(data_dir), "--windows", str(cfg.data.val_windows)]) == 0
    assert f"{summary.final_val_loss:.4f} nats" in capsys.readouterr().out  # seq_len from max_position_embeddings


def smoke_task_accuracy(model_dir):
    """The smoke task's accuracy computed directly: the choice with the highest summed log-likelihood."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tstrain.evaluation import TASKS_DIR

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    docs = [json.loads(line) for line in (TASKS_DIR / "tstrain_smoke_mc.jsonl").read_text().splitlines()]
    correct = 0
    for doc in docs:
        scores = []
        for choice in doc["choices"]:
            context = tok(doc["context"])["input_ids"]
            whole = tok(doc["context"] + " " + choice)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        correct += max(range(len(scores)), key=scores.__getitem__) == doc["label"]
    return correct / len(docs), len(docs)


def test_lm_eval_bridge_runs_the_local_task_offline(run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e '.[eval]'")
    from tstrain.evaluation import run_lm_eval

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out, _, _ = run
    model_dir = export(out, tmp_path / "model")
    results = run_lm_eval(model_dir, ["tstrain_smoke_mc"], standard_tasks=False, batch_size=8)
    metrics = results["results"]["tstrain_smoke_mc"]
    accuracy, docs = smoke_task_accuracy(model_dir)
    assert metrics["sample_len"] == docs
    assert metrics["acc,none"] == pytest.approx(accuracy)
    assert 0.0 <= metrics["acc_norm,none"] <= 1.0
    assert results["n-shot"]["tstrain_smoke_mc"] == 0
    # The command line, with the task given as a local YAML file and the results written as JSON.
    from tstrain.evaluation import TASKS_DIR

    assert main(["lm-eval", str(model_dir), "--tasks", str(TASKS_DIR / "tstrain_smoke_mc.yaml"), "--local-only",
                 "--limit", "6", "--out", str(tmp_path / "r.json")]) == 0
    assert "tstrain_smoke_mc" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["results"]["tstrain_smoke_mc"]["sample_len"] == 6


def write_config(path, family):
    """A tiny Hugging Face config.json of ``family``, written from its transformers config class."""
    from transformers import GPT2Config, MistralConfig, Qwen3MoeConfig

    if family == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64)
    elif family == "mistral":
        config = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=64, sliding_window=None)
    else:
        config = Qwen3MoeConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                moe_intermediate_size=32, max_position_embeddings=64, router_aux_loss_coef=0.01)
    config.to_json_file(path)
    return path


@pytest.mark.parametrize("family", ["gpt2", "mistral", "qwen3_moe"])
def test_any_causal_lm_config_trains_through_both_phases_and_exports(family, data_dir, tmp_path, capsys):
    config = write_config(tmp_path / f"{family}.json", family)
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--model-config", str(config), "--data", str(data_dir), "--out", str(run),
                 "--steps", "6", "--ratio", "0.5", "--set", "train.eval_every=3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["switch_step"] == 3 and math.isfinite(summary["final_val_loss"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows if "loss" in r} == {1, 2}
    cfg = load_config(config_file=run / "config.toml")
    exported = json.loads((run / "final" / "config.json").read_text())
    assert exported["model_type"] == family and exported["vocab_size"] == cfg.model.vocab_size
    ids = torch.randint(0, 300, (1, 16))
    assert torch.equal(hf_logits(run / "final", ids),
                       checkpoint_logits(cfg, list_checkpoints(run / "checkpoints")[-1], ids))
