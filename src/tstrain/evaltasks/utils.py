"""Documents of the tstrain_smoke_mc lm-eval task, read from the JSONL next to this file (no download)."""

import json
from pathlib import Path

DOCS = Path(__file__).with_name("tstrain_smoke_mc.jsonl")


def load_smoke_mc(**_metadata):
    """Return ``{"test": Dataset}`` of the task's documents: ``context``, ``choices``, ``label``."""
    import datasets

    rows = [json.loads(line) for line in DOCS.read_text().splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
