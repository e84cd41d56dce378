"""The TST settings and their rules, from one source: ``Schedule``, the config (and so the command line),
the Hugging Face ``TSTTrainer`` and the TorchTitan extension refuse the same settings in the same words."""

import math
import random
import re
import subprocess
import sys

import pytest

import tstrain
from tstrain.config import load_config
from tstrain.errors import ConfigError, ConfigTypeError
from tstrain.schedule import TSTSettings, wsd_lr

GEOMETRY = {"steps": "train.steps", "batch_size": "train.batch_size", "seq_len": "train.seq_len"}
DRAWS = {
    "bag_size": [1, 2, 3, 4, 8, 2.5, 0, -1],
    "ratio": [0.0, 0.2, 0.3, 0.5, 0.96, 0.01, 1.0, -0.1, math.nan],
    "variant": ["both", "input", "output", "middle"],
    "transition": ["hard", "step-down", "blend", "soft"],
    "transition_steps": [0, 2, 6, 100, -1],
    "expand": ["length", "batch"],
    "weights": ["uniform", "power", "mi", "loud"],
    "steps": [1, 2, 10, 30, 0],
    "batch_size": [1, 4, 8],
    "seq_len": [2, 7, 8, 16],
}


def draw(rng: random.Random) -> dict:
    """Return a set of settings, each drawn from valid and invalid values (most draws mostly valid)."""
    valid = {"bag_size": 4, "ratio": 0.3, "variant": "both", "transition": "hard", "transition_steps": 0,
             "expand": "length", "weights": "uniform", "steps": 10, "batch_size": 4, "seq_len": 8}
    valid = dict(sorted(valid.items(), key=lambda kv: rng.random()))  # any order: the verdict must not depend on it
    return {k: rng.choice(DRAWS[k]) if rng.random() < 0.4 else v for k, v in valid.items()}


def plain(message: str) -> str:
    """Return a message with each caller's names of the settings made plain (``tst.ratio`` -> ``ratio``)."""
    return re.sub(r"\b(tst|train|training)\.", "", message).replace("global_batch_size", "batch_size")


def verdict(make) -> tuple[str, str] | None:
    """Return ``(error kind, plain message)`` of what ``make()`` raised, or None when it accepted."""
    try:
        make()
    except ConfigError as e:
        return ("type" if isinstance(e, TypeError) else "value", plain(str(e)))
    return None


def python_verdict(s: dict):
    return verdict(lambda: tstrain.Schedule(**s))


def config_verdict(s: dict):
    geometry = {GEOMETRY[k]: s[k] for k in GEOMETRY}
    tst = {f"tst.{k}": v for k, v in s.items() if k not in GEOMETRY}
    return verdict(lambda: load_config("tiny", overrides={**tst, **geometry}))


def torchtitan_verdict(s: dict):
    from tstrain.integrations.torchtitan.data import RUN_NAMES
    from tstrain.integrations.torchtitan.data import TSTSettings as TitanSettings
    from tstrain.schedule import raise_first

    def make():
        settings = TitanSettings(**{k: v for k, v in s.items() if k not in GEOMETRY})
        raise_first(settings.run_rules(s["steps"], s["batch_size"], s["seq_len"], RUN_NAMES))
    return verdict(make)


def test_random_settings_get_the_same_verdict_and_message_from_the_schedule_the_config_and_torchtitan():
    pytest.importorskip("torchtitan", reason="the TorchTitan extension needs torchtitan")
    rng, refused = random.Random(0), 0
    for _ in range(400):
        s = draw(rng)
        want = python_verdict(s)
        assert config_verdict(s) == want, s
        assert torchtitan_verdict(s) == want, s
        refused += want is not None
    assert 100 < refused < 350  # the draws hold both kinds


def test_the_hf_trainer_takes_the_schedule_so_it_refuses_what_the_schedule_refuses(tmp_path):
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from tstrain.integrations.hf_trainer import TSTTrainer

    with pytest.raises(TypeError, match="schedule must be a tstrain.Schedule"):
        TSTTrainer(None, TrainingArguments(output_dir=str(tmp_path), report_to=[]), tokens=[1, 2],
                   schedule={"steps": 10, "ratio": 0.96})


@pytest.mark.parametrize("settings, message", [
    ({"bag_size": 2, "ratio": 0.96}, "switches at step 10 and leaves no phase-2 step"),
    ({"bag_size": 2, "ratio": 0.01}, "rounds to no phase-1 step"),
    ({"bag_size": 4, "expand": "batch", "seq_len": 6}, "seq_len \\(6\\) divisible by bag_size \\(4\\)"),
    ({"bag_size": 4, "expand": "batch", "seq_len": 2}, "seq_len \\(2\\) divisible by bag_size \\(4\\)"),
    ({"bag_size": 3, "transition": "step-down"}, "needs an even bag_size above 2; got 3"),
    ({"bag_size": 4, "transition": "blend", "transition_steps": 30}, "blend needs transition_steps between 2"),
    ({"bag_size": 4, "steps": 0}, "steps must be an integer >= 1; got 0"),
])
def test_the_schedule_refuses_settings_that_would_train_wrongly_before_any_step(settings, message):
    with pytest.raises(ValueError, match=message):
        tstrain.Schedule(**{"steps": 10, "batch_size": 4, "seq_len": 8, **settings})


@pytest.mark.parametrize("settings", [{"bag_size": 2.5}, {"bag_size": True}, {"ratio": "0.3"},
                                      {"transition_steps": 1.5}])
def test_a_setting_of_the_wrong_type_is_a_type_error_naming_it(settings):
    with pytest.raises(ConfigTypeError, match=next(iter(settings))) as caught:
        tstrain.Schedule(steps=10, batch_size=4, seq_len=8, **settings)
    assert isinstance(caught.value, TypeError)


def test_the_settings_alone_are_the_schedules_and_build_it():
    settings = TSTSettings(bag_size=2, ratio=0.2, weights="power")
    sch = settings.schedule(100, 8, 16)
    assert sch.settings() == settings and sch.switch_step == 20 and sch.weights == "power"
    assert load_config("tiny", overrides={"tst.bag_size": 2}).tst.settings() == TSTSettings(bag_size=2)


def test_the_config_names_its_fields_in_the_same_message():
    with pytest.raises(ConfigError, match=r"^tst.ratio=0.96 of 10 steps switches at step 10 .*raise train.steps$"):
        load_config("tiny", overrides={"tst.bag_size": 2, "tst.ratio": 0.96, "train.steps": 10})
    with pytest.raises(ConfigError, match=r"^tst.bag_size must be an integer; got 2.5$"):
        load_config("tiny", overrides={"tst.bag_size": 2.5})


def test_the_command_line_refuses_in_one_line_with_the_flags_names(data_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tstrain", "train", "--preset", "tiny", "--data", str(data_dir),
                           "--out", str(tmp_path / "run"), "--steps", "10", "--set", "tst.ratio=0.96",
                           "--set", "tst.bag_size=2", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "tst.ratio=0.96 of 10 steps switches at step 10" in done.stderr


def test_the_lr_is_never_negative_past_the_last_step_and_refuses_settings_that_would_make_it_so():
    sch = tstrain.Schedule(steps=10, batch_size=4, seq_len=8, bag_size=2, ratio=0.3)
    assert [sch.lr(t, 1.0, 2, 0.5) for t in (9, 10, 11, 50)] == [0.0, 0.0, 0.0, 0.0]
    assert sch.lr(50, 1.0, 2, 0.5, final_lr_fraction=0.1) == pytest.approx(0.1)
    assert sch.lr(50, 1.0, 2, 0.5, restart=True) == 0.0
    assert min(wsd_lr(t, 10, 1.0, 3, 1.0) for t in range(40)) >= 0.0
    for args, message in [((1.0, 2, 1.5), "decay_fraction must be in"), ((-1.0, 2, 0.5), "peak must be a positive"),
                          ((1.0, -2, 0.5), "warmup must be an integer >= 0")]:
        with pytest.raises(ValueError, match=message):
            sch.lr(0, *args)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        sch.lr(-1, 1.0, 2, 0.5)


def test_a_step_outside_the_schedule_is_refused_by_name():
    sch = tstrain.Schedule(steps=10, batch_size=4, seq_len=8, bag_size=2, ratio=0.3)
    assert sch.check_step(9) == 9
    for step in (10, -1, 2.0):
        with pytest.raises(ValueError, match="outside the schedule's steps 0..9"):
            sch.check_step(step)


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


def test_the_data_tokens_of_a_run_are_the_sum_of_its_steps_tokens_read_on_random_settings():
    rng, built = random.Random(7), 0
    while built < 60:
        settings = {"steps": rng.randint(1, 60), "batch_size": rng.choice([1, 4, 8]), "seq_len": rng.choice([8, 16]),
                    "bag_size": rng.choice([1, 2, 3, 4, 8]), "ratio": rng.choice([0.0, 0.2, 0.5, 0.9]),
                    "transition": rng.choice(["hard", "step-down", "blend"]), "transition_steps": rng.choice([0, 6]),
                    "variant": rng.choice(["both", "input", "output"]), "expand": rng.choice(["length", "batch"])}
        try:
            sch = tstrain.Schedule(**settings)
        except ValueError:
            continue
        built += 1
        for steps in (None, 0, 1, sch.switch_step, rng.randint(0, sch.steps)):
            end = sch.steps if steps is None else steps
            assert sch.data_tokens(steps) == sum(sch.tokens_read(t) for t in range(end)), (settings, steps)


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
    assert cfg.schedule == sch and cfg.switch_step == sch.switch_step == 15
