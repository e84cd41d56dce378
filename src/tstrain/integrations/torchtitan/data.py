"""The data side of TST in TorchTitan: each step's micro-batches from ``tstrain.BatchMaker``.

TorchTitan's trainer pulls ``(input_dict, labels)`` pairs, ``gradient_accumulation_steps`` (times
the pipeline micro-batches) per optimizer step on each data-parallel rank. ``TSTDataLoader``
gives it, in that order, the rank's slices of each step's global batch as ``tstrain.BatchMaker``
cuts them: ``{"input": ids, "positions": 0..L-1}`` with ids ``(b, L, s)`` (bags, phase 1) or
``(b, L)`` (tokens), and labels ``(b, L, k)``, the target bag of each position (``k`` = 1 in
phase 2). The window length
and the shapes change at the switch; which tokens a step reads is a pure function of the step and
the seed, so the loader's state is the number of steps read and a resumed run, at any
data-parallel degree, reads what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import tyro
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.config import TrainingConfig
from typing_extensions import Doc

from ... import Batch, BatchMaker, superposition_batch
from ... import schedule as settings
from ...data.tokens import TokenData

# How the TST rules name the run's geometry in TorchTitan's config.
RUN_NAMES = {"steps": "training.steps", "batch_size": "training.global_batch_size", "seq_len": "training.seq_len"}


def _documented(cls: type) -> type:
    """Return a subclass of the dataclass ``cls`` whose fields carry their doc line in their type (PEP 727
    ``Doc``), which is where TorchTitan's parser (tyro) reads ``--help`` text from: each line stays written
    once, beside its field in ``tstrain.schedule``."""
    hints = typing.get_type_hints(cls)
    documented = [(f.name, Annotated[hints[f.name], Doc(f.metadata["doc"])],
                   dataclasses.field(default=f.default, metadata=f.metadata)) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(cls.__name__, documented, bases=(cls,), frozen=True, kw_only=True,
                                      namespace={"__doc__": cls.__doc__, "__module__": cls.__module__})


@_documented
@dataclass(frozen=True, kw_only=True)
class TSTSettings(settings.TSTSettings):
    """tstrain's TST settings (``tstrain.TSTSettings``: the same fields, rules and messages), given as
    ``--tst.FIELD`` (``--tst.bag_size 4 --tst.ratio 0.3``): bags of ``bag_size`` tokens for the first
    ``ratio`` of the steps."""

    @classmethod
    def name_of(cls, setting_name: str) -> str:
        return f"tst.{setting_name}"


def global_batch(training: TrainingConfig, dp_world_size: int) -> int:
    """Return the sequences of a step's global batch: ``training.global_batch_size``, or where it is not set
    (not above 0) ``training.local_batch_size`` on each of the ``dp_world_size`` data-parallel ranks."""
    given = training.global_batch_size
    return given if given > 0 else training.local_batch_size * dp_world_size


def open_tokens(path: str) -> tuple[Any, int | None]:
    """Return the training tokens at ``path`` and their vocabulary size (None when unknown).

    ``path`` is a data dir made by ``tstrain prepare-data`` or a ``.npy`` file of token ids.
    """
    p = Path(path)
    if p.suffix == ".npy" and p.is_file():
        return np.load(p, mmap_mode="r"), None
    if p.is_dir():
        data = TokenData(p)
        return data.train, data.vocab_size
    raise ValueError(f"dataloader.dataset_path={path!r} is neither a data dir made by `tstrain prepare-data` "
                     "nor a .npy file of token ids; set --dataloader.dataset_path")


def as_model_inputs(batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Return ``({"input": ids, "positions": ...}, labels)`` of a micro-batch of one kind.

    ids are ``(b, L, s)`` (bags) or ``(b, L)`` (tokens), positions ``(b, L)``, labels ``(b, L, k)``.
    """
    if len(batch.pieces) != 1:
        raise ValueError("a micro-batch mixes bag and token sequences; TorchTitan takes one kind per micro-batch")
    (piece,) = batch.pieces
    g = piece.group
    inputs, targets = superposition_batch(piece.windows, g.positions, g.bag_size, g.variant)
    if inputs.shape[-1] == 1:
        inputs = inputs[..., 0]
    # Positions 0..L-1 in every sequence: the causal mask over the whole window (as tstrain trains),
    # which TorchTitan's flex and varlen attention build from them.
    positions = torch.arange(g.positions).expand(inputs.shape[0], -1).contiguous()
    return {"input": inputs.contiguous(), "positions": positions}, targets.contiguous()


class TSTDataLoader(BaseDataLoader):
    """Each step's micro-batches for this data-parallel rank, from a prepared data dir, a ``.npy`` file or an array.

    ``tst``, ``training`` and ``vocab_size`` are filled in by ``TSTTrainer`` from its own config.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):
        seed: int = 0
        """Keys the order the steps read the data in (as ``tstrain train --seed``)."""

        tokens: Annotated[Any, tyro.conf.Suppress] = None
        """A 1-D token array (NumPy array or memmap, tensor, list) given in Python, read instead of ``dataset_path``."""

        tst: Annotated[TSTSettings | None, tyro.conf.Suppress] = None
        training: Annotated[TrainingConfig | None, tyro.conf.Suppress] = None
        vocab_size: Annotated[int | None, tyro.conf.Suppress] = None

    def __init__(self, config: Config, *, dp_world_size: int = 1, dp_rank: int = 0, local_batch_size: int,
                 seq_len: int, tokenizer=None, snapshot_every_n_steps: int | None = None):
        if config.tst is None or config.training is None:
            raise ValueError("TSTDataLoader is built by TSTTrainer, which gives it the TST settings")
        if config.tokens is not None:
            tokens, data_vocab = config.tokens, None
        elif config.dataset_path:
            tokens, data_vocab = open_tokens(config.dataset_path)
        else:
            raise ValueError("set --dataloader.dataset_path to a data dir made by `tstrain prepare-data` "
                             "or a .npy file of token ids")
        if data_vocab is not None and config.vocab_size is not None and data_vocab > config.vocab_size:
            raise ValueError(f"the data's vocabulary has {data_vocab} ids but the model's {config.vocab_size}; "
                             "choose a model whose vocab_size covers the tokenizer")
        batch = global_batch(config.training, dp_world_size)
        if batch % (dp_world_size * local_batch_size):
            raise ValueError(f"the global batch of {batch} sequences does not split into {dp_world_size} "
                             f"ranks x micro-batches of {local_batch_size}")
        self.schedule = config.tst.schedule(config.training.steps, batch, seq_len)
        self.maker = BatchMaker(tokens, self.schedule, config.seed, vocab_size=config.vocab_size)
        self.pulls_per_step = batch // dp_world_size // local_batch_size
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        self.steps_read = 0

    def micro_batch(self, step: int, index: int) -> Batch:
        """Return micro-batch ``index`` of this rank in step ``step`` (0-based)."""
        return self.maker.micro_batch(step, index, self.pulls_per_step, self.dp_rank, self.dp_world_size)

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        while self.steps_read < self.schedule.steps:
            step = self.steps_read
            for index in range(self.pulls_per_step):
                pair = as_model_inputs(self.micro_batch(step, index))
                if index == self.pulls_per_step - 1:  # the trainer checkpoints between steps: count this one read
                    self.steps_read = step + 1
                yield pair

    def state_dict(self) -> dict[str, Any]:
        return {"tst_steps_read": self.steps_read}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.steps_read = int(state_dict["tst_steps_read"])
