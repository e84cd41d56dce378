"""Typed settings: each field's flag, default, choices and help come from the dataclass; bad values fail in one line."""

from dataclasses import dataclass, fields
from typing import Literal

import pytest

from tstrain.errors import ConfigError
from tstrain.options import as_text, check, choices_of, from_text, knob, option_help


def pairs(text: str) -> tuple[tuple[int, float], ...]:
    """``4:0.3,2:0.2`` as ``((4, 0.3), (2, 0.2))``."""
    return tuple((int(a), float(b)) for a, b in (item.split(":") for item in text.split(",")))


@dataclass(frozen=True)
class Toy:
    shard_tokens: int = knob(1000, "tokens per shard")
    mode: Literal["fast", "exact"] = knob("fast", "how to run")
    progress: bool = knob(True, "show a progress bar")
    verbose: bool = knob(False, "say more")
    arms: tuple[tuple[int, float], ...] = knob(((4, 0.3),), "the arms", parse=pairs, takes="S:R pairs")
    name: str = knob("", "a name", resume_free=True)

    def rules(self):
        return [(self.shard_tokens >= 1, f"--shard-tokens must be at least 1; got {self.shard_tokens}"),
                (len(self.arms) <= 2, f"at most 2 arms; got {len(self.arms)}")]


def test_each_field_gives_its_flag_default_type_choices_and_help():
    by_name = {f["name"]: f for f in option_help(Toy)}
    assert [f["flag"] for f in by_name.values()] == ["--shard-tokens", "--mode", "--no-progress", "--verbose",
                                                    "--arms", "--name"]
    assert by_name["shard_tokens"]["type"] == "int" and by_name["shard_tokens"]["default"] == 1000
    assert by_name["shard_tokens"]["help"] == "tokens per shard (default: 1000)"
    assert by_name["mode"]["type"] == "choice" and by_name["mode"]["choices"] == ("fast", "exact")
    assert by_name["progress"]["help"] == "turn off: show a progress bar"  # on unless asked: the flag turns it off
    assert by_name["verbose"]["help"] == "say more"  # a switch shows no default
    assert by_name["arms"]["type"] == "list" and by_name["arms"]["help"] == "the arms, as S:R pairs (default: 4:0.3)"
    assert by_name["name"]["help"] == "a name" and by_name["name"]["choices"] is None  # an empty default is not shown


def test_knob_records_its_doc_and_whether_a_field_may_change_on_resume():
    meta = {f.name: f.metadata for f in fields(Toy)}
    assert meta["name"]["resume_free"] and not meta["mode"]["resume_free"]
    assert meta["mode"]["doc"] == "how to run" and meta["arms"]["parse"] is pairs
    assert choices_of(Literal["a", "b"]) == ("a", "b") and choices_of(int) is None


def test_values_are_written_as_the_command_line_takes_them():
    assert as_text(((4, 0.3), (2, 0.2))) == "4:0.3,2:0.2"
    assert as_text((8, 16)) == "8,16" and as_text(["a"]) == "a" and as_text(0.5) == "0.5"
    assert pairs(as_text(((4, 0.3), (2, 0.2)))) == ((4, 0.3), (2, 0.2))  # the text reads back as the value


def test_text_is_parsed_only_for_fields_with_a_parser_and_bad_text_fails_in_one_line():
    assert from_text(Toy, {"arms": "2:0.5,8:0.1", "shard_tokens": 7}) == Toy(shard_tokens=7, arms=((2, 0.5), (8, 0.1)))
    assert from_text(Toy, {}) == Toy()
    with pytest.raises(ConfigError) as refused:
        from_text(Toy, {"arms": "4-0.3"})
    assert str(refused.value) == "--arms takes S:R pairs; got '4-0.3'"


def test_check_refuses_a_value_outside_its_choices_before_the_rules():
    with pytest.raises(ConfigError) as refused:
        check(Toy(mode="slow", shard_tokens=0), ConfigError)
    assert str(refused.value) == "--mode must be one of fast, exact; got 'slow'"
    with pytest.raises(ValueError, match=r"^tst\.mode must be one of"):  # named as the caller names fields
        check(Toy(mode="slow"), ValueError, name=lambda field: f"tst.{field}")


def test_check_raises_the_first_failing_rule_and_passes_good_options():
    with pytest.raises(ConfigError) as refused:
        check(Toy(shard_tokens=0, arms=((1, 0.1),) * 3), ConfigError)
    assert str(refused.value) == "--shard-tokens must be at least 1; got 0"
    with pytest.raises(ConfigError, match="^at most 2 arms; got 3$"):
        check(Toy(arms=((1, 0.1),) * 3), ConfigError)
    check(Toy(mode="exact", arms=((2, 0.5), (8, 0.1))), ConfigError)  # nothing raised
