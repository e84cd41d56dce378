"""The TorchTitan extension: its components against the public surface, and TorchTitan's own
trainer, on the CPU, logging at each step the loss ``tstrain.TSTLoss`` gives on the same weights."""

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torchtitan", reason="torchtitan is not installed (pip install 'tstrain[torchtitan]')")

from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss  # noqa: E402
from torchtitan.config import TrainingConfig  # noqa: E402
from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention  # noqa: E402
from torchtitan.models.llama3 import model_registry  # noqa: E402

import tstrain  # noqa: E402
from tstrain.integrations.torchtitan import (  # noqa: E402
    BagEmbedding,
    BagEmbeddingConverter,
    CausalAttentionConverter,
    MultiHotLoss,
    TSTDataLoader,
    TSTSettings,
)
from tstrain.integrations.torchtitan.config_registry import tst_llama3_debugmodel  # noqa: E402
from tstrain.integrations.torchtitan.data import as_model_inputs  # noqa: E402
from tstrain.integrations.torchtitan.trainer import config_problems  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 2048  # TorchTitan's Llama 3 debug model


@pytest.fixture(scope="module")
def model():
    """TorchTitan's Llama 3 debug model cut to two layers, with bag-averaging embeddings and causal SDPA."""
    spec = model_registry("debugmodel", converters=[BagEmbeddingConverter.Config(), CausalAttentionConverter.Config()])
    spec.model.layers = spec.model.layers[:2]
    torch.manual_seed(0)
    built = spec.model.build()
    built.init_weights(buffer_device=None)
    return built


def tst_loss_of(model, weights="uniform"):
    """The public surface's loss over the same model, given as its three parts."""
    def body(embeds):
        h = embeds
        for layer in model.layers.values():
            h = layer(h, None, None)
        return model.norm(h)
    return tstrain.TSTLoss(embedding=model.tok_embeddings.weight, body=body, head=model.lm_head, weights=weights)


# ----------------------------------------------------------------------------------------------
# The model: bag-averaging embeddings, causal attention
# ----------------------------------------------------------------------------------------------


def test_the_bag_embedding_averages_bags_as_the_core_does_and_looks_tokens_up_as_before():
    emb = BagEmbedding.Config(num_embeddings=50, embedding_dim=8).build()
    bags = torch.randint(0, 50, (2, 5, 4))
    assert torch.equal(emb(bags), tstrain.bag_embeddings(emb.weight, bags))
    tokens = torch.randint(0, 50, (2, 5))
    assert torch.equal(emb(tokens), torch.nn.functional.embedding(tokens, emb.weight))


def test_the_converters_swap_the_embedding_and_every_attention_and_keep_the_rest():
    plain = model_registry("debugmodel").model
    spec = model_registry("debugmodel", converters=[BagEmbeddingConverter.Config(), CausalAttentionConverter.Config()])
    converted = spec.model
    assert type(converted.tok_embeddings) is BagEmbedding.Config
    assert (converted.tok_embeddings.num_embeddings, converted.tok_embeddings.embedding_dim) == (VOCAB, 256)
    assert converted.tok_embeddings.param_init == plain.tok_embeddings.param_init
    assert any(plain.traverse(FlexAttention.Config)) and not any(converted.traverse(FlexAttention.Config))
    assert len(list(converted.traverse(ScaledDotProductAttention.Config))) == len(converted.layers)


# ----------------------------------------------------------------------------------------------
# The loss: TorchTitan's normalization over micro-batches gives TSTLoss's mean
# ----------------------------------------------------------------------------------------------


def titan_loss(model, loss_fn, micro_batches):
    """Return the step's loss as TorchTitan's trainer forms it: each micro-batch's sum over the step's targets."""
    pairs = [as_model_inputs(m) for m in micro_batches]
    targets = torch.tensor(sum(labels.numel() for _, labels in pairs))
    total = 0
    for inputs, labels in pairs:
        loss, _ = loss_fn(model(inputs["input"]), labels, targets)
        total = total + loss
    return total


@pytest.mark.parametrize("variant", ["both", "input", "output"])
@pytest.mark.parametrize("step", [0, 3])  # a bag step and a next-token step
def test_the_loss_component_over_micro_batches_is_tstrains_loss_of_the_whole_batch(model, variant, step):
    sch = tstrain.Schedule(steps=4, batch_size=4, seq_len=8, bag_size=3, ratio=0.5, variant=variant)
    maker = tstrain.BatchMaker(np.random.default_rng(0).integers(0, VOCAB, 5000), sch, seed=1)
    power = MultiHotLoss.Config(tst=TSTSettings(weights="power")).build()
    ours = titan_loss(model, power, maker.micro_batches(step, grad_accum=2))
    reference = tst_loss_of(model, weights="power")(maker.batch(step))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    head = model.lm_head.weight
    g_ours, = torch.autograd.grad(ours, head)
    g_ref, = torch.autograd.grad(reference, head)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def test_the_loss_component_scores_plain_next_token_labels_as_torchtitans_cross_entropy(model):
    tokens = torch.randint(0, VOCAB, (2, 9))
    logits = model(tokens[:, :-1])
    ours, _ = MultiHotLoss.Config().build()(logits, tokens[:, 1:], torch.tensor(16))
    theirs, _ = CrossEntropyLoss.Config().build()(logits, tokens[:, 1:], torch.tensor(16))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_the_loss_component_inside_the_chunked_head_gives_the_same_loss_and_gradients(model):
    sch = tstrain.Schedule(steps=4, batch_size=4, seq_len=8, bag_size=4, ratio=0.5)
    maker = tstrain.BatchMaker(np.random.default_rng(1).integers(0, VOCAB, 5000), sch, seed=0)
    chunked = ChunkedLossWrapper.Config(num_chunks=4, loss_fn=MultiHotLoss.Config()).build()
    chunked.set_lm_head(model.lm_head)
    model.zero_grad()
    model._skip_lm_head = True
    try:
        ours = titan_loss(model, chunked, maker.micro_batches(0, grad_accum=2))
        ours.backward()
    finally:
        model._skip_lm_head = False
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    reference = tst_loss_of(model)(maker.batch(0))
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-6), name
    model.zero_grad()


# ----------------------------------------------------------------------------------------------
# The dataloader: BatchMaker's micro-batches for each rank, in the trainer's order
# ----------------------------------------------------------------------------------------------


def loader(path, rank, world, tst, pull=2, seed=2, steps=6, global_batch=8):
    training = TrainingConfig(local_batch_size=pull, global_batch_size=global_batch, steps=steps, seq_len=8)
    cfg = TSTDataLoader.Config(dataset_path=str(path), seed=seed, tst=tst, training=training, vocab_size=500)
    return cfg.build(dp_world_size=world, dp_rank=rank, local_batch_size=pull, seq_len=8)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.npy"
    np.save(path, np.random.default_rng(3).integers(0, 500, 40_000).astype(np.uint16))
    return path


@pytest.mark.parametrize("tst", [{}, {"transition": "step-down", "bag_size": 8}, {"expand": "batch"},
                                 {"variant": "output"}], ids=["hard", "step-down", "batch", "output"])
def test_the_dataloader_yields_each_ranks_micro_batches_of_the_batch_maker_through_the_switch(token_file, tst):
    settings = TSTSettings(**{"bag_size": 4, "ratio": 0.5, **tst})
    schedule = settings.schedule(6, 8, 8)
    maker = tstrain.BatchMaker(np.load(token_file), schedule, seed=2)
    for rank in range(2):
        pairs = list(loader(token_file, rank, 2, settings))
        assert len(pairs) == 6 * 2  # two pulls of two sequences per step on each of two ranks
        for i, (inputs, labels) in enumerate(pairs):
            step, k = divmod(i, 2)
            want_inputs, want_labels = as_model_inputs(maker.micro_batch(step, k, 2, rank, 2))
            assert torch.equal(inputs["input"], want_inputs["input"]) and torch.equal(labels, want_labels)
            (group,) = schedule.plan(step)
            assert labels.shape == (group.count // 4, group.positions, labels.shape[-1])
            assert inputs["positions"].tolist() == [list(range(group.positions))] * labels.shape[0]
    first, last = pairs[0], pairs[-1]
    assert last[0]["input"].shape == (2, 8) and last[1].shape == (2, 8, 1)  # phase 2: plain next-token
    if settings.variant == "both" and settings.expand == "length":
        assert first[0]["input"].shape == (2, 8, settings.bag_size) and first[1].shape == (2, 8, settings.bag_size)


def test_the_dataloader_reads_a_token_array_given_in_python_as_it_reads_the_file(token_file):
    settings = TSTSettings(bag_size=4, ratio=0.5)
    training = TrainingConfig(local_batch_size=2, global_batch_size=8, steps=6, seq_len=8)
    given = TSTDataLoader.Config(tokens=np.load(token_file).tolist(), seed=2, tst=settings, training=training)
    pairs = zip(given.build(dp_world_size=2, dp_rank=0, local_batch_size=2, seq_len=8),
                loader(token_file, 0, 2, settings))
    assert all(torch.equal(a[0]["input"], b[0]["input"]) and torch.equal(a[1], b[1]) for a, b in pairs)


def test_a_reloaded_dataloader_resumes_at_the_step_it_had_read_at_any_data_parallel_degree(token_file):
    settings = TSTSettings(bag_size=4, ratio=0.5)
    whole = loader(token_file, 0, 1, settings, pull=4)
    it = iter(whole)
    for _ in range(3 * 2):  # three steps of two pulls
        next(it)
    state = whole.state_dict()
    assert state == {"tst_steps_read": 3}
    fresh = loader(token_file, 0, 1, settings, pull=4)
    fresh.load_state_dict(state)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(fresh, it))
    half = loader(token_file, 1, 2, settings)  # rank 1 of 2, resumed from the one-process state
    half.load_state_dict(state)
    inputs, labels = next(iter(half))
    maker = tstrain.BatchMaker(np.load(token_file), settings.schedule(6, 8, 8), seed=2)
    assert torch.equal(labels, as_model_inputs(maker.micro_batch(3, 0, 2, 1, 2))[1])


def test_the_dataloader_refuses_data_it_cannot_read_or_the_model_cannot_embed(tmp_path, data_dir, token_file):
    with pytest.raises(ValueError, match="neither a data dir.*nor a .npy file"):
        loader(tmp_path / "missing", 0, 1, TSTSettings())
    training = TrainingConfig(local_batch_size=2, steps=4, seq_len=8)
    small = TSTDataLoader.Config(dataset_path=str(data_dir), tst=TSTSettings(), training=training, vocab_size=100)
    with pytest.raises(ValueError, match="vocabulary has 320 ids but the model's 100"):
        small.build(local_batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match="does not split into 2 ranks"):
        loader(token_file, 0, 2, TSTSettings(), pull=3, global_batch=8)


# ----------------------------------------------------------------------------------------------
# The trainer's refusals
# ----------------------------------------------------------------------------------------------


def test_the_ready_made_run_is_accepted_and_each_setting_its_components_cannot_carry_is_refused():
    assert config_problems(tst_llama3_debugmodel()) == []
    cases = [
        (lambda c: setattr(c, "tst", replace(c.tst, transition="blend")), "blend mixes bag and token sequences"),
        (lambda c: setattr(c, "tst", replace(c.tst, ratio=0.999)),
         "tst.ratio=0.999 of 100 steps switches at step 100 and leaves no phase-2 step.*raise training.steps"),
        (lambda c: setattr(c, "tst", replace(c.tst, expand="batch", bag_size=3)), "training.seq_len \\(512\\) "
         "divisible by tst.bag_size \\(3\\)"),
        (lambda c: setattr(c, "loss", CrossEntropyLoss.Config()), "loss must be MultiHotLoss"),
        (lambda c: setattr(c, "model_spec", model_registry("debugmodel")), "converters=\\[BagEmbeddingConverter"),
        (lambda c: setattr(c.training, "disable_cuda_graphs", False), "--training.disable_cuda_graphs"),
        (lambda c: setattr(c.parallelism, "tensor_parallel_degree", 2), "spmd_backend partial_dtensor"),
        (lambda c: (setattr(c.parallelism, "pipeline_parallel_degree", 2),
                    setattr(c, "tst", replace(c.tst, expand="batch"))),
         "use tst.expand=length"),
    ]
    for change, message in cases:
        config = tst_llama3_debugmodel()
        change(config)
        problems = config_problems(config)
        assert len(problems) == 1 and re.search(message, problems[0]), problems


# ----------------------------------------------------------------------------------------------
# End to end: TorchTitan's trainer on the CPU
# ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_titan(data_dir, out, *extra):
    """Run ``examples/torchtitan/train.py --cpu --check`` in one process; return its JSON line and its log."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    args = ["--cpu", "--check", "--module", "tstrain.integrations.torchtitan", "--config", "tst_llama3_debugmodel",
            "--dataloader.dataset_path", str(data_dir), "--dump_folder", str(out), "--training.steps", "4",
            "--training.seq_len", "16", "--training.local_batch_size", "2", "--training.global_batch_size", "4",
            "--tst.ratio", "0.5", "--debug.seed", "0", "--training.mixed_precision_param", "float32",
            "--checkpoint.enable", "--checkpoint.interval", "1", *extra]
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "torchtitan" / "train.py"), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


def test_torchtitans_trainer_logs_tstrains_loss_at_every_step_through_the_switch_and_after_a_resume(data_dir,
                                                                                                     tmp_path):
    whole, log = run_titan(data_dir, tmp_path)
    assert "the switch before step 3" in log  # steps 1-2 on bags of 4 (two micro-batches each), 3-4 next-token
    assert len(whole["losses"]) == len(whole["reference"]) == 4
    assert whole["losses"] == pytest.approx(whole["reference"], rel=1e-4)
    resumed, log = run_titan(data_dir, tmp_path, "--checkpoint.load_step", "1")  # from inside phase 1
    assert "Training starts at step 2" in log
    assert resumed["losses"] == pytest.approx(whole["losses"][1:], rel=1e-6)
    assert resumed["losses"] == pytest.approx(resumed["reference"], rel=1e-4)


def test_the_example_job_parses_with_command_line_overrides_and_is_accepted(monkeypatch):
    from torchtitan.config import ConfigManager

    monkeypatch.syspath_prepend(str(ROOT / "examples" / "torchtitan"))
    config = ConfigManager().parse_args(["--module", "tst_job", "--config", "tst_job", "--tst.bag_size", "8",
                                         "--tst.transition", "step-down", "--tst.weights", "power"])
    assert (config.tst.bag_size, config.tst.transition, config.tst.weights) == (8, "step-down", "power")
    assert config_problems(config) == []


def test_torchtitans_help_shows_each_tst_flag_with_its_doc_line_and_default(monkeypatch, capsys):
    from torchtitan.config import ConfigManager

    monkeypatch.syspath_prepend(str(ROOT / "examples" / "torchtitan"))
    with pytest.raises(SystemExit):
        ConfigManager().parse_args(["--module", "tst_job", "--config", "tst_job", "--help"])
    text = capsys.readouterr().out
    section = " ".join(re.sub("[│╰╯╭╮─]", " ", text[text.index("tst options"):text.index("subcommands")]).split())
    for f in fields(tstrain.TSTSettings):
        flag = f"--tst.{f.name.replace('_', '-')}"
        shown = re.search(re.escape(flag) + r" (INT|FLOAT|\{[^}]*\}) (.*?) \(default: ([^)]*)\)", section)
        assert shown is not None, (flag, section)
        assert (shown[2], shown[3]) == (f.metadata["doc"], str(f.default)), flag
