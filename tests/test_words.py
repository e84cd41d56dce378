"""The project speaks of the project: docs, sources and results say what tstrain does and how to rerun
a figure, never how or when it was built."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = re.compile(r"\bsessions?\b|\bissue[- ]#?\d+|today's fix|\btoday\b(?!\()|device tool|carry=\[", re.I)
SUFFIXES = {".md", ".py", ".sh", ".toml", ".txt", ".json"}


def project_files():
    yield from (ROOT / name for name in ("README.md", "ARCHITECTURE.md", "Makefile", "pyproject.toml"))
    for folder in ("docs", "src", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file() and "egg-info" not in str(path):
                yield path


def test_no_file_speaks_of_how_the_project_was_made():
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
             for path in project_files()
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if WORDS.search(line)]
    assert found == []
