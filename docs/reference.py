"""Write the reference parts of docs/configuration.md and docs/cli.md from the code.

    python docs/reference.py           # rewrite both pages below their marker
    python docs/reference.py --check   # exit 1 if either page differs from the code

The configuration reference comes from the config's field docs (``config.field_help``), the
command-line reference from the parsers (``cli.build_parser``) and the fields of the verbs' options
dataclasses (``options.option_help``); tests/test_docs.py fails when a page drifts from them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
MARK = "<!-- Generated from the code by docs/reference.py: edit the code, then run it. -->"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """Return the table of every config field: key, default, choices and its doc line."""
    from tstrain.config import SECTIONS, field_help

    rows = ["## Every field", "", "| field | default | meaning |", "| --- | --- | --- |"]
    section = None
    for f in field_help():
        name = f["key"].split(".")[0]
        if name != section:
            section = name
            doc = (SECTIONS[name].__doc__ or "").strip().splitlines()[0]
            rows.append(f"| **[{name}]** | | {_cell(doc)} |")
        choices = f" (one of {', '.join(f'`{c}`' for c in f['choices'])})" if f["choices"] else ""
        rows.append(f"| `{f['key']}` | `{f['default']!r}` | {_cell(f['doc'])}{choices} |")
    return "\n".join(rows) + "\n"


def _option_row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
    default = "" if action.default in (None, argparse.SUPPRESS, False) else f"`{action.default!r}`"
    return f"| {flags} | {default} | {_cell(action.help or '')} |"


def cli_reference() -> str:
    """Return each verb's help and the table of its arguments, as the parsers define them."""
    from tstrain.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    out = ["## Every verb and option"]
    for verb, parser in sub.choices.items():
        out += ["", f"### `tstrain {verb}`", "", _cell(helps.get(verb, "")), "",
                "| argument | default | meaning |", "| --- | --- | --- |"]
        actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        out += [_option_row(a) for a in actions if not a.dest.startswith(("field:", "option:"))]
        if any(a.dest.startswith("field:") for a in actions):
            out += ["", "and every config field as `--SECTION.FIELD VALUE` ([configuration](configuration.md))."]
        if parser.get_default("options"):
            out += ["", f"and every field of `{parser.get_default('options').__name__}` as a flag (below)."]
    return "\n".join(out) + "\n" + options_reference(sub.choices)


def options_reference(parsers: dict[str, argparse.ArgumentParser]) -> str:
    """Return the table of each verb's options dataclass: flag, Python field, default and its doc line."""
    from tstrain.options import as_text, option_help

    out = ["", "## The options of prepare-data, sweep and scale", "",
           "Their flags are the fields of an options dataclass, which the Python functions take too "
           "(`prepare_data(inputs, out, PrepareOptions(...))`, `scale_study(data, out, ScaleOptions(...))`)."]
    for verb, parser in parsers.items():
        cls = parser.get_default("options")
        if cls is None:
            continue
        out += ["", f"### `{cls.__module__.removeprefix('tstrain.')}.{cls.__name__}` (`tstrain {verb}`)", "",
                _cell((cls.__doc__ or "").strip().splitlines()[0]), "",
                "| flag | field | default | meaning |", "| --- | --- | --- | --- |"]
        for f in option_help(cls):
            takes = f"; on a command line, {f['takes']}" if f["takes"] else ""
            choices = f" (one of {', '.join(f'`{c}`' for c in f['choices'])})" if f["choices"] else ""
            default = "" if f["default"] in (None, ()) else f"`{as_text(f['default'])}`"
            out.append(f"| `{f['flag']}` | `{f['name']}` | {default} | {_cell(f['doc'] + takes)}{choices} |")
    return "\n".join(out) + "\n"


GENERATED = {"configuration.md": config_reference, "cli.md": cli_reference}


def rendered(page: str) -> str:
    """Return ``page`` as it should be: its hand-written part, the marker, then the generated part."""
    text = (DOCS / page).read_text()
    written = text.split(MARK)[0].rstrip()
    return f"{written}\n\n{MARK}\n\n{GENERATED[page]()}"


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = [page for page in GENERATED if (DOCS / page).read_text() != rendered(page)]
    if check:
        for page in stale:
            print(f"docs/{page} differs from the code: run python docs/reference.py", file=sys.stderr)
        return 1 if stale else 0
    for page in stale:
        (DOCS / page).write_text(rendered(page))
    return 0


if __name__ == "__main__":
    sys.exit(main())
