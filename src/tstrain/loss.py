"""The loss of a TST batch for one model: bag-mean inputs, the unchanged transformer, the multi-hot CE.

``TSTLoss`` is what a training loop calls once per micro-batch, in either phase: it cuts each
piece's windows into inputs and targets for its kind (bags of ``s``, or next-token), averages the
input bags in the embedding, runs the model's body, and scores the head's logits with the
multi-hot cross entropy (fused with the head in chunks for large vocabularies). A batch that mixes
kinds (a blended transition) gets the mean over its sequences. Torch only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .batches import Batch, Piece, refuse_out_of_vocab
from .errors import ConfigTypeError
from .model_parts import CallableParts, ModelParts, causal_problem, parts_of
from .superposition import (
    DCLM_MI_EXPONENT,
    bag_embeddings,
    linear_multi_hot_cross_entropy,
    multi_hot_cross_entropy,
    superposition_batch,
)

FUSED_FROM_VOCAB = 32768  # ``fused="auto"``: fuse the head with the loss from this vocabulary size on


class TSTLoss:
    """``loss(batch)``: the mean TST loss of a micro-batch (a float32 scalar to call ``backward`` on).

    ``model`` is a Hugging Face causal LM (its input embedding, base model and output head are
    used; a mixture-of-experts model adds its router loss as in ordinary training). Any other model
    is given as ``embedding`` (an ``nn.Embedding`` or its weight), ``body`` (input embeddings
    ``(B, L, d)`` to hidden states) and ``head`` (hidden states to logits). ``weights`` is the
    target bags' weighting (``superposition.bag_weights``). ``fused``: ``"auto"`` fuses a bias-free
    linear head with the loss from a vocabulary of 32,768; ``"on"`` / ``"off"`` force it.
    Ids a ``BatchMaker`` did not check against this vocabulary (one made without ``vocab_size``) are
    checked here (on a device: one host sync per piece); ``check_ids`` also range-checks the target
    ids inside the loss. ``check_causal`` (default on): at the first call, refuse a body that is not
    causal (a position seeing later tokens, as in ``BertForMaskedLM``), from two extra forward
    passes of one sequence.
    """

    def __init__(self, model: nn.Module | ModelParts | None = None, *,
                 embedding: nn.Module | torch.Tensor | None = None,
                 body: Callable[[torch.Tensor], torch.Tensor] | None = None, head: Callable | None = None,
                 weights: str | torch.Tensor | list | tuple = "uniform", mi_exponent: float = DCLM_MI_EXPONENT,
                 fused: str = "auto", chunk_size: int = 2048, check_ids: bool = False, check_causal: bool = True):
        given = [part is not None for part in (embedding, body, head)]
        if (model is not None and any(given)) or (model is None and not all(given)):
            raise ValueError("give either a causal LM (model=...) or its three parts (embedding=, body=, head=)")
        if fused not in ("auto", "on", "off"):
            raise ValueError(f"fused must be auto, on or off; got {fused!r}")
        self.parts = parts_of(model) if model is not None else CallableParts(embedding, body, head)
        self.weights, self.mi_exponent, self.chunk_size, self.check_ids = weights, mi_exponent, chunk_size, check_ids
        self.causal_unchecked = check_causal
        plain = self.parts.plain_linear_head
        self.fused = plain and (fused == "on" or (fused == "auto" and self.parts.vocab_size >= FUSED_FROM_VOCAB))

    def __call__(self, batch: Batch | Piece) -> torch.Tensor:
        pieces = batch.pieces if isinstance(batch, Batch) else (batch,)
        if len(pieces) == 1:
            return self.piece_loss(pieces[0])
        # Each piece's loss is a mean over its sequences, so pieces are weighted by their sequence count.
        total = sum(p.sequences for p in pieces)
        return sum(self.piece_loss(p) * (p.sequences / total) for p in pieces)

    def piece_loss(self, piece: Piece) -> torch.Tensor:
        """Return the mean loss of one piece's sequences (all of one kind)."""
        g, vocab = piece.group, self.parts.vocab_size
        if piece.ids_below is None or piece.ids_below > vocab:
            refuse_out_of_vocab(piece.windows, vocab)
        inputs, targets = superposition_batch(piece.windows, g.positions, g.bag_size, g.variant)
        bags = inputs.shape[-1] > 1
        embeds = bag_embeddings(self.parts.embedding.weight, inputs) if bags else None
        if self.causal_unchecked:
            self.refuse_non_causal(embeds if bags else self.parts.embedding(inputs[:1, :, 0]))
        if bags:  # averaged embeddings fed to the unchanged transformer
            hidden, aux = self.parts.hidden_states_and_aux_loss(inputs_embeds=embeds)
        else:
            hidden, aux = self.parts.hidden_states_and_aux_loss(input_ids=inputs[..., 0])
        loss = self.head_loss(hidden, targets, self.weights if targets.shape[-1] > 1 else "uniform")
        return loss if aux is None else loss + aux

    def refuse_non_causal(self, embeds: torch.Tensor) -> None:
        """Raise a TypeError if the body lets a position see later tokens (checked once)."""
        problem = causal_problem(self.parts, embeds)
        if problem:
            raise ConfigTypeError(problem)
        self.causal_unchecked = False

    def head_loss(self, hidden: torch.Tensor, targets: torch.Tensor, weights) -> torch.Tensor:
        """Return the MCE of the head's logits against ``targets``, fused over chunks when chosen."""
        if self.fused:
            return linear_multi_hot_cross_entropy(hidden, self.parts.head.weight, targets, weights,
                                                  chunk_size=self.chunk_size, mi_exponent=self.mi_exponent,
                                                  check_ids=self.check_ids)
        return multi_hot_cross_entropy(self.parts.logits(hidden), targets, weights, mi_exponent=self.mi_exponent,
                                       check_ids=self.check_ids)
