"""The documentation's Python snippets run as written, in order, on a small prepared data dir."""

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/python-api.md", "docs/integrations.md"]


def snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_snippets(code_blocks: list[str], data_dir: Path, extra: dict | None = None) -> None:
    namespace = dict(extra or {})
    for code in code_blocks:
        exec(compile(code.replace('"data/quick"', repr(str(data_dir))), "<doc>", "exec"), namespace)


@pytest.mark.parametrize("page", PAGES)
def test_every_snippet_of_the_page_runs(page, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = snippets((ROOT / page).read_text())
    assert blocks
    run_snippets(blocks, data_dir)


def test_the_readmes_own_loop_trains_a_model(data_dir, tmp_path, monkeypatch):
    from tstrain.config import ModelConfig
    from tstrain.data.tokens import TokenData
    from tstrain.models import build_model

    monkeypatch.chdir(tmp_path)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Inside your own loop", 1)[1].split("\n## ", 1)[0]
    (block,) = snippets(section)
    torch.manual_seed(0)
    model = build_model(ModelConfig(), TokenData(data_dir).vocab_size, 64)
    before = [p.detach().clone() for p in model.parameters()]
    run_snippets([block], data_dir, {"model": model})
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_generated_reference_pages_match_the_code():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import reference
    finally:
        sys.path.remove(str(ROOT / "docs"))
    for page in reference.GENERATED:
        assert (ROOT / "docs" / page).read_text() == reference.rendered(page), f"run python docs/reference.py ({page})"
