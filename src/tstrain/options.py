"""Typed, documented settings: the one form of every setting a person gives tstrain.

The TST settings (``schedule.TSTSettings``), a config section (``config.py``) or the options of a verb
(``data.prepare.PrepareOptions``, ``studies.plans.ScaleOptions``) is a dataclass: each field has one default
and one line of documentation (``knob``), a field with a fixed set of values is a ``Literal``, and ``rules()``
returns the checks of its values as ``(ok, message)`` pairs, each message naming the fix. The
command line builds its flags, defaults and help from the fields (``option_help``), and
``docs/reference.py`` the reference tables, so a setting is described in one place. The standard library
only: the torch-free public core (``schedule``) writes its settings with it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import field, fields
from typing import Any, Literal

from .errors import ConfigError


def knob(default: Any, doc: str, *, resume_free: bool = False, parse: Callable[[str], Any] | None = None,
         takes: str = "") -> Any:
    """Return a dataclass field with its documentation.

    ``resume_free`` (config fields) marks a field that may change on resume because it does not
    change the numbers (logging, checkpoint cadence, where the data lives). ``parse`` turns the
    text of a command-line flag into the value, for a field that is not one number or word; it
    raises ValueError for text that is not what ``takes`` says the flag takes.
    """
    return field(default=default, metadata={"doc": doc, "resume_free": resume_free, "parse": parse, "takes": takes})


def choices_of(hint: Any) -> tuple[Any, ...] | None:
    """Return the allowed values of a ``Literal`` field (None for a free one)."""
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _type_name(hint: Any) -> str:
    """Return a field's type as a word: ``int``, ``float``, ``str``, ``bool``, ``choice`` or ``list``."""
    if choices_of(hint) is not None:
        return "choice"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return "list"
    return hint.__name__


def flag_of(name: str) -> str:
    """Return the command-line flag of a field: ``shard_tokens`` is ``--shard-tokens``."""
    return "--" + name.replace("_", "-")


def option_help(cls: type) -> list[dict[str, Any]]:
    """Return one entry per field of an options dataclass: ``name``, ``flag``, ``default``, ``type`` (a word),
    ``choices``, ``doc``, ``help`` (the flag's), and ``parse`` and ``takes`` (how a flag's text becomes the value).

    A field that is on unless asked (a bool whose default is True) has the flag ``--no-NAME``.
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind, doc, takes = _type_name(hints[f.name]), f.metadata.get("doc", ""), f.metadata.get("takes", "")
        negated = kind == "bool" and f.default is True
        flag_help = f"turn off: {doc}" if negated else f"{doc}, as {takes}" if takes else doc
        if kind != "bool" and f.default not in (None, (), ""):
            flag_help += f" (default: {as_text(f.default)})"
        out.append({"name": f.name, "flag": flag_of(f"no_{f.name}" if negated else f.name), "default": f.default,
                    "type": kind, "choices": choices_of(hints[f.name]), "doc": doc, "help": flag_help,
                    "parse": f.metadata.get("parse"), "takes": takes})
    return out


def as_text(value: Any) -> str:
    """Return a value as a command line writes it: a list comma-separated, a pair as ``a:b``."""
    if isinstance(value, (tuple, list)):
        return ",".join(":".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v) for v in value)
    return str(value)


def from_text(cls: type, texts: dict[str, Any]) -> Any:
    """Return ``cls`` with the fields in ``texts`` set: values of fields with a ``parse`` are its command-line
    text, read here (a ConfigError names the flag and what it takes); the others are values already."""
    values = {}
    for f in option_help(cls):
        if f["name"] not in texts:
            continue
        value = texts[f["name"]]
        if f["parse"] is not None:
            try:
                value = f["parse"](value)
            except ValueError:
                raise ConfigError(f"{f['flag']} takes {f['takes']}; got {value!r}") from None
        values[f["name"]] = value
    return cls(**values)


def check(options: Any, error: type[Exception], name: Callable[[str], str] = flag_of) -> None:
    """Raise ``error`` with the message of the first value of ``options`` that cannot work: one outside its
    ``Literal``, then the first of its ``rules()`` that fails (a dataclass that refuses bad values as it is
    made, as the TST settings do, has none). ``name`` says how a message names a field (a flag, or a config
    key)."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        allowed = choices_of(hints[f.name])
        if allowed is not None and getattr(options, f.name) not in allowed:
            raise error(f"{name(f.name)} must be one of {', '.join(allowed)}; got {getattr(options, f.name)!r}")
    for ok, message in options.rules() if hasattr(options, "rules") else []:
        if not ok:
            raise error(message)
