"""Shared fixtures: a small synthetic corpus, prepared once per test session."""

import random

import pytest

from tstrain.config import load_config
from tstrain.data import prepare_data

WORDS = (
    "the a cat dog bird sat ran flew on under over mat tree house red big small old blue "
    "saw liked found near with and then quickly slowly happy sad home garden river"
).split()


def make_corpus(path, docs=1500, seed=0):
    """Write ``docs`` short pseudo-sentences separated by blank lines; a learnable toy language."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(docs):
            sentences = []
            for _ in range(rng.randint(2, 6)):
                subject = f"the {rng.choice(WORDS[5:19])} {rng.choice(['cat', 'dog', 'bird'])}"
                sentences.append(f"{subject} {rng.choice(['sat', 'ran', 'flew', 'saw'])} {rng.choice(['on', 'under', 'over', 'near'])} the {rng.choice(['mat', 'tree', 'house', 'garden', 'river'])}.")
            f.write(" ".join(sentences) + "\n\n\n")
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    text = make_corpus(root / "corpus.txt")
    out = root / "data"
    prepare_data([text], out, train_tokenizer=320, doc_separator="\n\n\n", val_fraction=0.05, progress=False)
    return out


@pytest.fixture
def tiny_cfg(data_dir):
    """The tiny preset on the session corpus, short and quiet; tests override what they vary."""
    def make(**overrides):
        base = {"data.path": str(data_dir), "log.progress": False, "train.steps": 24, "train.eval_every": 6,
                "log.every": 1}
        base.update(overrides)
        return load_config("tiny", overrides=base)
    return make
