"""The public surface (``import tstrain``): the schedule, the batch maker and the loss, their
references, and a loop built from them repeating ``tstrain train``'s numbers."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tstrain
from tstrain.batches import Piece
from tstrain.config import load_config
from tstrain.data.tokens import DataError, TokenData
from tstrain.models import build_model
from tstrain.superposition import reference_multi_hot_cross_entropy
from tstrain.train.loop import train
from tstrain.train.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = "transformers,tokenizers,pyarrow,matplotlib,tensorboard,safetensors,tomli_w"


def run_blocked(blocked: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``args`` (a script, or ``-m module``) with the ``blocked`` packages impossible to import."""
    return subprocess.run([sys.executable, str(ROOT / "tests" / "run_blocked.py"), blocked, *args],
                          capture_output=True, text=True, timeout=600)


def train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


# ----------------------------------------------------------------------------------------------
# The schedule
# ----------------------------------------------------------------------------------------------


def test_the_schedule_gives_each_steps_phase_groups_and_tokens():
    sch = tstrain.Schedule(steps=10, batch_size=4, seq_len=8, bag_size=4, ratio=0.3)
    assert sch.switch_step == 3 and [sch.phase(t) for t in (0, 2, 3, 9)] == [1, 1, 2, 2]
    assert sch.is_switch(3) and not sch.is_switch(0) and sch.changes() == [3]
    (bags,), (tokens,) = sch.plan(0), sch.plan(3)
    assert (bags.bag_size, bags.count, bags.positions, bags.variant, bags.stride, bags.window) == (4, 4, 8, "both", 32,
                                                                                                  36)
    assert (tokens.bag_size, tokens.positions, tokens.variant, tokens.stride, tokens.window) == (1, 8, None, 8, 9)
    assert sch.tokens_read(0) == 4 * sch.tokens_read(3) == 4 * 4 * 8
    assert sch.positions_trained(0) == sch.positions_trained(3) == 32  # equal FLOPs per step
    wide = tstrain.Schedule(steps=10, batch_size=4, seq_len=8, bag_size=4, ratio=0.3, expand="batch")
    assert [(g.count, g.positions) for g in wide.plan(0)] == [(16, 2)] and wide.tokens_read(0) == sch.tokens_read(0)
    assert tstrain.Schedule(steps=10, batch_size=4, seq_len=8, bag_size=1, ratio=0.3).switch_step == 0


def test_the_schedules_lr_is_one_wsd_over_the_run_or_one_per_phase():
    sch = tstrain.Schedule(steps=100, batch_size=4, seq_len=8, bag_size=4, ratio=0.3)
    assert [sch.lr(t, 1.0, 10, 0.2) for t in (0, 9, 50, 79, 80, 99)] == [0.1, 1.0, 1.0, 1.0, 0.95, 0.0]
    assert sch.lr(30, 1.0, 10, 0.2, restart=True) == 0.1  # phase 2 warms up again
    assert sch.lr(29, 1.0, 10, 0.2, restart=True) == 0.0  # phase 1 decayed to its end


@pytest.mark.parametrize("bad", [{"ratio": 1.0}, {"bag_size": 0}, {"variant": "middle"}, {"steps": 0},
                                 {"transition": "soft"}, {"expand": "width"}, {"transition_steps": -1}])
def test_the_schedule_refuses_settings_that_cannot_work(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        tstrain.Schedule(**{"steps": 10, "batch_size": 4, "seq_len": 8, **bad})


@pytest.mark.parametrize("overrides", [{}, {"tst.transition": "step-down", "tst.bag_size": 8},
                                       {"tst.transition": "blend", "tst.transition_steps": 6},
                                       {"tst.variant": "output"}, {"tst.expand": "batch"}])
def test_the_config_derives_its_switch_and_transitions_from_the_schedule(overrides):
    cfg = load_config("tiny", overrides={"train.steps": 30, "tst.ratio": 0.5, **overrides})
    sch = tstrain.Schedule(steps=30, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len,
                           bag_size=cfg.tst.bag_size, ratio=0.5, variant=cfg.tst.variant,
                           transition=cfg.tst.transition, transition_steps=cfg.tst.transition_steps,
                           expand=cfg.tst.expand)
    assert cfg.schedule == sch and cfg.switch_step == sch.switch_step
    assert [cfg.schedule.plan(t) for t in range(30)] == [sch.plan(t) for t in range(30)]


# ----------------------------------------------------------------------------------------------
# The batch maker
# ----------------------------------------------------------------------------------------------


def schedule_of(steps=12, **tst):
    return tstrain.Schedule(steps=steps, batch_size=8, seq_len=8, **{"bag_size": 4, "ratio": 0.5, **tst})


def rows_of_kind(batches, kind):
    """Return the windows of one kind of sequence in ``batches``, in order."""
    return torch.cat([p.windows for b in batches for p in b.pieces if p.group.kind == kind])


@pytest.mark.parametrize("tst", [{}, {"transition": "blend", "transition_steps": 4}])
def test_micro_batches_and_process_slices_cut_the_global_batch_in_order(tst):
    tokens = np.random.default_rng(0).integers(0, 500, 20_000)
    maker = tstrain.BatchMaker(tokens, schedule_of(**tst), seed=3)
    for step in range(12):
        whole = maker.batch(step)
        assert whole.sequences == 8 and sum(p.group.count for p in whole.pieces) == 8
        cut = [m for rank in range(2) for m in maker.micro_batches(step, grad_accum=2, rank=rank, world_size=2)]
        assert all(m.sequences == 2 for m in cut)
        for kind in {p.group.kind for p in whole.pieces}:
            assert torch.equal(rows_of_kind([whole], kind), rows_of_kind(cut, kind))


def test_the_batch_maker_reads_lists_tensors_and_memmaps_alike(tmp_path):
    ids = np.random.default_rng(1).integers(0, 300, 5_000).astype(np.uint16)
    path = tmp_path / "tokens.bin"
    ids.tofile(path)
    sources = [ids, np.memmap(path, dtype=np.uint16, mode="r"), ids.tolist(), torch.from_numpy(ids.astype(np.int64))]
    batches = [tstrain.BatchMaker(src, schedule_of(), seed=0).batch(s) for src in sources for s in (0, 7)]
    assert all(torch.equal(b.pieces[0].windows, batches[i % 2].pieces[0].windows) for i, b in enumerate(batches))


def test_the_batch_maker_refuses_ids_outside_the_vocabulary_without_a_device_sync():
    ids = np.random.default_rng(2).integers(0, 300, 5_000)
    ids[100:20_000:37] = 300
    with pytest.raises(DataError, match=r"outside the model's vocabulary \[0, 300\).*verify-data"):
        for step in range(12):
            tstrain.BatchMaker(ids, schedule_of(), seed=0, vocab_size=300).batch(step)


def test_the_batch_maker_reads_what_the_trainer_reads(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.steps": 8, "tst.ratio": 0.5, "train.grad_accum": 2})
    seen = []
    train(cfg, tmp_path / "run", loss_fn=lambda loss, batch: seen.append(batch) or loss(batch))
    maker = tstrain.BatchMaker(TokenData(cfg.data.path).train, cfg.schedule, seed=cfg.train.seed)
    ours = [m for step in range(8) for m in maker.micro_batches(step, grad_accum=2)]
    assert len(seen) == len(ours) == 16
    assert all(a.pieces[0].group == b.pieces[0].group and torch.equal(a.pieces[0].windows, b.pieces[0].windows)
               for a, b in zip(seen, ours))


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Loops built from the surface repeat tstrain train's numbers
# ----------------------------------------------------------------------------------------------

REFERENCE = {"train.steps": 24, "tst.ratio": 0.5, "train.eval_every": 0, "log.every": 1}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
    """``tstrain train`` on the tiny preset through the switch (24 steps, switch at 12): per-step losses."""
    run = tmp_path_factory.mktemp("reference") / "run"
    cfg = load_config("tiny", overrides={"data.path": str(data_dir), "log.progress": False, **REFERENCE})
    train(cfg, run)
    return cfg.resolved_for(TokenData(data_dir).vocab_size), train_losses(run)


def test_the_public_api_by_hand_repeats_tstrain_train(reference_run, data_dir):
    cfg, expected = reference_run
    o = cfg.optim
    torch.set_flush_denormal(True)  # as the trainer does on CPU
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len)
    schedule = tstrain.Schedule(steps=24, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len, bag_size=4,
                                ratio=0.5)
    batches = tstrain.BatchMaker(TokenData(data_dir).train, schedule, seed=cfg.train.seed)
    loss_fn, opt = tstrain.TSTLoss(model), tstrain.adamw(model, o.lr, weight_decay=o.weight_decay)
    losses = []
    for step in range(schedule.steps):
        for group in opt.param_groups:
            group["lr"] = schedule.lr(step, o.lr, o.warmup_steps, o.decay_fraction)
        loss = loss_fn(batches.batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses == pytest.approx(expected, rel=1e-4)


def test_the_hf_trainer_example_repeats_tstrain_train(reference_run, data_dir):
    _, expected = reference_run
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--preset", "tiny", "--data",
                           str(data_dir), "--steps", "24", "--ratio", "0.5"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])["losses"]
    assert losses == pytest.approx(expected, rel=1e-4)


def test_the_own_loop_example_trains_with_the_extras_impossible_to_import(data_dir):
    done = run_blocked(EXTRAS, str(ROOT / "examples" / "own_loop.py"), "--data", str(data_dir), "--steps", "12")
    assert done.returncode == 0, done.stderr[-2000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])["losses"]
    assert len(losses) == 12 and all(np.isfinite(losses)) and losses[-1] < losses[0] - 1.0
    assert "step 4 phase 1" in done.stdout and "step 5 phase 2" in done.stdout  # the switch at round(0.3 * 12)


def test_import_tstrain_needs_only_torch_and_numpy():
    code = "import tstrain; print(' '.join(name for name in tstrain.__all__ if hasattr(tstrain, name)))"
    done = run_blocked(EXTRAS, "-c", code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == tstrain.__all__


@pytest.mark.parametrize("args", [["--help"], ["scale", "--help"], ["ablate", "--help"], ["train", "--help"]])
def test_the_command_lines_help_loads_no_torch(args):
    done = run_blocked("torch", "-m", "tstrain", *args)
    assert done.returncode == 0 and done.stdout.startswith("usage: tstrain"), done.stderr[-2000:]


def test_a_verb_missing_its_extra_names_it_in_one_line(data_dir, tmp_path):
    done = run_blocked("transformers", "-m", "tstrain", "train", "--preset", "tiny", "--data", str(data_dir),
                       "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("tstrain train: error: needs the transformers package, which "
                                                    "the [hf] extra installs: pip install 'tstrain[hf]'")


def test_the_hf_trainer_under_torchrun_with_accumulation_repeats_tstrain_train(reference_run, data_dir):
    _, expected = reference_run
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           str(ROOT / "examples" / "hf_trainer.py"), "--preset", "tiny", "--data", str(data_dir),
                           "--steps", "24", "--ratio", "0.5", "--grad-accum", "2"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])["losses"]  # rank 0: the mean over both processes
    assert losses == pytest.approx(expected, rel=1e-4)


def hf_trainer(data_dir, out, cfg):
    """A ``TSTTrainer`` on the tiny preset's model, checkpointing every 5 steps into ``out``."""
    from transformers import TrainingArguments

    from tstrain.integrations.hf_trainer import TSTTrainer

    o = cfg.optim
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.model.vocab_size, cfg.train.seq_len)
    args = TrainingArguments(output_dir=str(out), learning_rate=o.lr, weight_decay=o.weight_decay, adam_beta1=o.beta1,
                             adam_beta2=o.beta2, warmup_steps=o.warmup_steps, gradient_accumulation_steps=2,
                             save_strategy="steps", save_steps=5, report_to=[], disable_tqdm=True, use_cpu=True,
                             lr_scheduler_kwargs={"decay_fraction": o.decay_fraction})
    schedule = tstrain.Schedule(steps=24, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len, bag_size=4,
                                ratio=0.5)
    return TSTTrainer(model, args, tokens=TokenData(data_dir).train, schedule=schedule, seed=cfg.train.seed)


def test_the_hf_trainer_resumes_from_a_checkpoint_before_the_switch_exactly(reference_run, data_dir, tmp_path):
    cfg, expected = reference_run
    whole = hf_trainer(data_dir, tmp_path / "whole", cfg)
    whole.train()
    assert whole.step_losses == pytest.approx(expected, rel=1e-4)
    resumed = hf_trainer(data_dir, tmp_path / "whole", cfg)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-10"))  # the switch is at step 12
    assert resumed.step_losses == pytest.approx(whole.step_losses[10:], rel=1e-6)


def test_the_command_line_helps_without_extras_and_an_experiment_checks_its_extras_before_training(data_dir,
                                                                                                 tmp_path):
    done = run_blocked(f"{EXTRAS},tqdm", "-m", "tstrain", "--help")
    assert done.returncode == 0 and "prepare-data" in done.stdout
    done = run_blocked("matplotlib", "-m", "tstrain", "compare", "--preset", "tiny", "--data", str(data_dir),
                       "--out", str(tmp_path / "cmp"), "--steps", "4", "--no-progress")
    assert done.returncode == 2 and "[plots] extra" in done.stderr
    assert not (tmp_path / "cmp").exists()  # refused before any training


@pytest.mark.parametrize("code, extra", [
    ("from tstrain.models import build_model; from tstrain.config import ModelConfig; "
     "build_model(ModelConfig(), 64, 8)",
     "pip install 'tstrain[hf]'"),
    ("import tstrain.integrations.hf_trainer", "pip install 'tstrain[trainer]'"),
])
def test_a_module_that_needs_an_extra_names_it_when_it_is_missing(code, extra):
    done = run_blocked("transformers", "-c", code)
    assert done.returncode == 1 and extra in done.stderr.strip().splitlines()[-1]


def test_lm_eval_without_its_extra_names_the_eval_extra(tmp_path):
    done = run_blocked("transformers,lm_eval", "-m", "tstrain", "lm-eval", str(tmp_path), "--tasks", "hellaswag")
    assert done.returncode == 2 and "tstrain[eval]" in done.stderr


def test_the_embedding_may_be_given_as_a_bare_weight_even_a_non_leaf_view():
    torch.manual_seed(0)
    model = build_model(load_config("tiny").model, 97, 8)
    body = lambda e: model.model(inputs_embeds=e).last_hidden_state  # noqa: E731
    batch = tstrain.BatchMaker(np.random.default_rng(0).integers(0, 97, 4000), schedule_of(steps=4)).batch(0)
    module = tstrain.TSTLoss(embedding=model.model.embed_tokens, body=body, head=model.lm_head)(batch)
    view = model.model.embed_tokens.weight * 1.0  # a non-leaf tensor, as a sharded weight's local view is
    bare = tstrain.TSTLoss(embedding=view, body=body, head=model.lm_head)(batch)
    assert bare.item() == module.item()
    bare.backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0  # the gradient reaches the weight through the view
