"""The optional packages: which extra of ``pyproject.toml`` installs each, what training and preparing data need,
and the one-line fix for one that is missing.

The command line's verbs (each parser's ``needs``) and ``tstrain doctor``'s tiny train ask these same lists, so
both refuse a missing package in the same words. The standard library only.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

# Which extra brings each optional package (pyproject.toml): named when one is missing.
EXTRA_OF = {"transformers": "hf", "safetensors": "hf", "tomli_w": "hf", "tqdm": "hf", "tokenizers": "data",
            "pyarrow": "data", "matplotlib": "plots", "tensorboard": "tb", "wandb": "wandb", "lm_eval": "eval"}
# The optional packages the trainer needs (train and the experiments), and prepare-data.
TRAINING = ("transformers", "safetensors", "tomli_w", "tqdm")
PREPARING = ("tokenizers", "tqdm")


def not_installed(needs: Iterable[str]) -> list[str]:
    """Return the packages of ``needs`` that are not installed, in order."""
    return [package for package in needs if importlib.util.find_spec(package) is None]


def check_extras(needs: tuple[str, ...]) -> None:
    """Raise ModuleNotFoundError for the first of a verb's optional packages (its parser's ``needs``) that is
    not installed, so an experiment does not fail at its plots after hours of training."""
    missing = not_installed(needs)
    if missing:
        raise ModuleNotFoundError(f"No module named {missing[0]!r}", name=missing[0])


def install_fix(package: str) -> str | None:
    """Return the one-line fix for a missing optional package (None for a package no extra installs)."""
    extra = EXTRA_OF.get(package)
    if extra is None:
        return None
    return f"needs the {package} package, which the [{extra}] extra installs: pip install 'tstrain[{extra}]'"


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """Return the one-line fix for a missing optional package (None for any other missing module)."""
    return install_fix((error.name or "").split(".")[0])
