"""The loss side of TST in TorchTitan: the multi-hot cross entropy as a TorchTitan loss component.

TorchTitan's trainer divides each micro-batch's summed loss by the step's count of target ids
(``global_valid_tokens``, over all micro-batches and data-parallel ranks) and sums the results.
``MultiHotLoss`` gives it, for logits ``(B, L, V)`` and target bags ``(B, L, k)``, ``k`` times the
sum over positions of ``tstrain.multi_hot_cross_entropy``'s per-position loss; a step's bags all
have the same ``k``, so the total is the mean loss over the step's positions, as ``tstrain.TSTLoss``
gives it (``k`` = 1 in phase 2: the ordinary summed cross entropy). It composes with
``ChunkedLossWrapper`` (the head applied chunk by chunk over positions) and ``compile``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import torch
import tyro
from torch.distributed.tensor import DTensor, Replicate, Shard
from torchtitan.components.loss import BaseLoss
from torchtitan.config import CompileConfig

from ... import TSTSettings, multi_hot_cross_entropy


def summed_multi_hot_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                                   tst: TSTSettings | None = None) -> torch.Tensor:
    """Return ``k`` times the summed per-position multi-hot CE of ``logits (B, L, V)`` and ``targets (B, L, k)``.

    TST windows hold no ignored targets, so the mean over positions times their count is the sum.
    DTensor logits sharded over the vocabulary (tensor parallelism) are gathered over it; each rank
    then scores its own positions.
    """
    if isinstance(logits, DTensor):
        vocab = logits.ndim - 1
        whole = [Replicate() if isinstance(p, Shard) and p.dim in (vocab, -1) else p for p in logits.placements]
        logits = logits.redistribute(placements=whole).to_local()
    if isinstance(targets, DTensor):
        targets = targets.to_local()
    if targets.dim() == logits.dim() - 1:  # plain next-token labels (B, L): bags of one
        targets = targets.unsqueeze(-1)
    tst = tst or TSTSettings()  # the bags' weighting: tst.weights and tst.mi_exponent
    mean = multi_hot_cross_entropy(logits, targets, tst.weights, mi_exponent=tst.mi_exponent, check_ids=False)
    return mean * targets.numel()


class MultiHotLoss(BaseLoss):
    """TST's multi-hot cross entropy with the trainer's token normalization (phase 2: the plain CE).

    The target bags' weighting (``tstrain.bag_weights``) is the run's ``--tst.weights`` and
    ``--tst.mi_exponent``, which ``TSTTrainer`` hands it (uniform when built alone).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(BaseLoss.Config):
        tst: Annotated[TSTSettings | None, tyro.conf.Suppress] = None

    def __init__(self, config: Config, *, compile_config: CompileConfig | None = None):
        self.fn = partial(summed_multi_hot_cross_entropy, tst=config.tst or TSTSettings())  # built once
        self._maybe_compile(compile_config)

    def __call__(self, pred: torch.Tensor, labels: torch.Tensor, global_valid_tokens: torch.Tensor | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = self.fn(pred, labels)
        if global_valid_tokens is not None:
            loss = loss / global_valid_tokens
        return loss, {}
