"""The per-step bag plan: the hard switch, the step-down and the blend, their data and their runs."""

import math

import numpy as np
import pytest
import torch

from tstrain.batches import Batch, Piece
from tstrain.config import ConfigError, load_config
from tstrain.data.reader import WindowReader, WindowSchedule
from tstrain.loss import TSTLoss
from tstrain.model_parts import CausalLMParts
from tstrain.models import build_model
from tstrain.train.loop import train
from tstrain.train.metrics import read_jsonl


def cfg_of(**overrides):
    base = {"train.steps": 40, "tst.ratio": 0.5, "tst.bag_size": 4, "train.batch_size": 8, "train.seq_len": 16}
    return load_config("tiny", overrides={**base, **overrides})


def train_rows(run):
    return [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


def test_step_down_sizes_halve_while_whole():
    sizes = {s: load_config("tiny", overrides={"tst.bag_size": s}).tst.step_down_sizes() for s in (3, 4, 6, 8)}
    assert sizes == {4: [4, 2], 8: [8, 4, 2], 6: [6, 3], 3: [3]}


def test_hard_switch_plan():
    cfg = cfg_of()
    assert [cfg.schedule.mix(t) for t in (0, 19, 20, 39)] == [((4, 8),), ((4, 8),), ((1, 8),), ((1, 8),)]
    assert cfg_of(**{"tst.expand": "batch"}).schedule.mix(0) == ((4, 32),)  # s times the sequences


def test_step_down_splits_phase_1_evenly_and_keeps_its_length():
    cfg = cfg_of(**{"tst.transition": "step-down", "tst.bag_size": 8, "train.steps": 60})  # S = 30: 10 steps each
    sizes = [cfg.schedule.mix(t)[0][0] for t in range(60)]
    assert sizes == [8] * 10 + [4] * 10 + [2] * 10 + [1] * 30
    assert all(cfg.schedule.mix(t)[0][1] == 8 for t in range(60))


def test_blend_moves_the_bag_share_from_1_to_0_around_the_switch_at_equal_budget():
    cfg = cfg_of(**{"tst.transition": "blend", "tst.transition_steps": 8})  # S = 20: steps 16..23 blend
    shares = [cfg.schedule.bag_share(t) for t in range(40)]
    assert shares[:16] == [1.0] * 16 and shares[24:] == [0.0] * 16
    assert all(1 > a > b > 0 for a, b in zip(shares[16:23], shares[17:24]))
    mixes = [dict((size, n) for size, n in cfg.schedule.mix(t)) for t in range(40)]
    assert all(sum(m.values()) == 8 for m in mixes)  # every step keeps B sequences (equal FLOPs)
    assert sum(m.get(4, 0) for m in mixes) == 8 * 20  # as many bag sequences as the hard switch
    assert any(len(m) == 2 for m in mixes)
    first, end = cfg_of(**{"tst.transition": "blend"}).schedule.blend_window()
    assert (first, end) == (15, 25)  # default: half of phase 1, centred on the switch


@pytest.mark.parametrize("transition", ["step-down", "blend"])
def test_transition_windows_are_contiguous_text_read_once_per_epoch(transition):
    cfg = cfg_of(**{"tst.transition": transition, "tst.transition_steps": 8})
    sched = WindowSchedule.for_run(cfg.schedule)
    assert sched.block_size == 4 * 16
    tokens = np.arange(sched.offset(40) + 4 * 16 * 3 + sched.tail, dtype=np.int64)
    reader = WindowReader(tokens, sched, seed=3)
    starts = []
    for t in range(40):
        pieces = reader.pieces(t)
        assert [(s, w.shape[0]) for s, w in pieces] == list(cfg.schedule.mix(t))
        for size, w in pieces:
            w = w.numpy()
            assert (np.diff(w, axis=1) == 1).all()  # each window is one stretch of the corpus
            stride = 16 * size
            assert w.shape[1] == (16 + 1) * size
            starts += [(int(row[0]), stride) for row in w]
        # Micro-batches are slices of the whole batch, across group boundaries too.
        halves = reader.pieces(t, 0, 3) + reader.pieces(t, 3, 5)
        joined = torch.cat([w[:, :17] for _, w in halves])
        assert torch.equal(joined, torch.cat([w[:, :17] for _, w in pieces]))
    # Within the first epoch, no input token is read twice.
    seen = np.concatenate([np.arange(a, a + n) for a, n in starts])
    assert len(np.unique(seen)) == len(seen)
    assert cfg.schedule.data_tokens(40) == len(seen)


def test_a_mixed_micro_batch_loss_is_the_sequence_weighted_mean():
    cfg = cfg_of()
    torch.manual_seed(0)
    parts = CausalLMParts(build_model(cfg.model, 320, 16))
    bags = Piece(cfg.schedule.group(4, 3), torch.randint(0, 320, (3, 17 * 4)))
    tokens = Piece(cfg.schedule.group(1, 5), torch.randint(0, 320, (5, 17)))
    loss = TSTLoss(parts)
    mixed = loss(Batch((bags, tokens)))
    expected = (3 * loss(bags).double() + 5 * loss(tokens).double()) / 8
    assert mixed.item() == pytest.approx(expected.item(), rel=1e-6)
    mixed.backward()
    assert all(torch.isfinite(p.grad).all() for p in parts.model.parameters() if p.grad is not None)


def test_transition_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="needs an even tst.bag_size above 2"):
        cfg_of(**{"tst.transition": "step-down", "tst.bag_size": 3})
    with pytest.raises(ConfigError, match="tst.transition_steps between 2 and 40"):
        cfg_of(**{"tst.transition": "blend", "tst.transition_steps": 41})
    with pytest.raises(ConfigError, match="expand=length only"):
        cfg_of(**{"tst.transition": "blend", "tst.expand": "batch"})
    with pytest.raises(ConfigError, match="tst.transition must be one of"):
        cfg_of(**{"tst.transition": "soft"})
    assert cfg_of(**{"tst.transition": "step-down", "tst.bag_size": 1}).switch_step == 0  # baseline: nothing to step


def test_step_down_run_reads_each_stage_s_times_the_text(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"tst.ratio": 0.5, "tst.transition": "step-down"})  # 24 steps, S = 12: 6 at s=4, 6 at s=2
    summary = train(cfg, tmp_path / "run")
    rows = train_rows(tmp_path / "run")
    B, L = cfg.train.batch_size, cfg.train.seq_len
    assert [r["bag_size"] for r in rows] == [4] * 6 + [2] * 6 + [1] * 12
    per_step = [b["data_tokens"] - a["data_tokens"] for a, b in zip([{"data_tokens": 0}] + rows, rows)]
    assert per_step == [B * L * 4] * 6 + [B * L * 2] * 6 + [B * L] * 12
    flops = [b["flops"] - a["flops"] for a, b in zip(rows, rows[1:])]
    assert max(flops) == min(flops)  # every step costs the same
    assert summary.data_tokens == B * L * (4 * 6 + 2 * 6 + 12) and math.isfinite(summary.final_val_loss)


def test_blend_run_mixes_batches_and_resumes_exactly_mid_blend(tiny_cfg, tmp_path):
    from test_train import numbers, train_crashing_at

    flags = {"tst.ratio": 0.5, "tst.transition": "blend", "tst.transition_steps": 8, "train.checkpoint_every": 5,
             "train.grad_accum": 2}
    cfg = tiny_cfg(**flags)
    train(cfg, tmp_path / "whole")
    rows = train_rows(tmp_path / "whole")
    B, L = cfg.train.batch_size, cfg.train.seq_len
    shares = [r["bag_share"] for r in rows]
    assert shares[:8] == [1.0] * 8 and shares[16:] == [0.0] * 8 and 0 < shares[11] < 1
    per_step = [b["data_tokens"] - a["data_tokens"] for a, b in zip([{"data_tokens": 0}] + rows, rows)]
    bags = [dict(cfg.schedule.mix(t)).get(4, 0) for t in range(24)]
    assert per_step == [L * (4 * k + (B - k)) for k in bags]
    assert all(math.isfinite(r["loss"]) for r in rows)
    # Crash at step 13 (in the blend, after the switch checkpoint at 12), resume: the same run.
    train_crashing_at(13, tiny_cfg(**flags), tmp_path / "broken")
    train(tiny_cfg(**flags), tmp_path / "broken", resume=True)
    assert (numbers(read_jsonl(tmp_path / "broken" / "metrics.jsonl"))
            == numbers(read_jsonl(tmp_path / "whole" / "metrics.jsonl")))


def test_blend_loss_differs_from_the_hard_switch_only_inside_the_window(tiny_cfg, tmp_path):
    train(tiny_cfg(**{"tst.ratio": 0.5}), tmp_path / "hard")
    train(tiny_cfg(**{"tst.ratio": 0.5, "tst.transition": "blend", "tst.transition_steps": 8}), tmp_path / "blend")
    hard, blend = train_rows(tmp_path / "hard"), train_rows(tmp_path / "blend")
    assert [r["loss"] for r in hard[:8]] == [r["loss"] for r in blend[:8]]  # same steps before the window
    assert [r["loss"] for r in hard[8:16]] != [r["loss"] for r in blend[8:16]]


@pytest.mark.parametrize("overrides", [
    {}, {"tst.ratio": 0.0}, {"tst.expand": "batch"}, {"tst.variant": "output"},
    {"tst.transition": "step-down", "tst.bag_size": 8, "train.steps": 47},  # S = 24 over 3 stages
    {"tst.transition": "step-down", "tst.bag_size": 6, "train.steps": 45},
    {"tst.transition": "blend", "tst.transition_steps": 7},
])
def test_the_declared_plan_changes_give_the_per_step_layout(overrides):
    from tstrain.data.reader import WindowSchedule

    cfg = cfg_of(**overrides)
    plan = cfg.schedule.plan
    N, changes = cfg.train.steps, set(cfg.schedule.changes())
    assert all(plan(t) == plan(t - 1) for t in range(1, N) if t not in changes)
    fast = WindowSchedule.for_run(cfg.schedule)
    slow = WindowSchedule(plan, N)  # every step its own segment
    assert [fast.offset(t) for t in range(N + 1)] == [slow.offset(t) for t in range(N + 1)]
    assert [fast.group_starts(t) for t in range(N)] == [slow.group_starts(t) for t in range(N)]
    assert (fast.block_size, fast.tail) == (slow.block_size, slow.tail)
    assert fast.offset(N + 5) == fast.offset(N) + 5 * cfg.schedule.tokens_read(N - 1)  # past the end: as the last step
