"""The next-token validation loss: the trainer's ``val_loss`` and ``tstrain eval``'s, over the same fixed
held-out windows (``data.reader.validation_windows``) and the same loss, so a run's logged value and a
later evaluation of its exported model agree.
"""

from __future__ import annotations

import torch

from ..model_parts import CausalLMParts
from ..superposition import multi_hot_cross_entropy, next_token_batch


def _next_token_logits(parts: CausalLMParts, inputs: torch.Tensor) -> torch.Tensor:
    return parts.logits(parts.hidden_states(input_ids=inputs))


@torch.no_grad()
def validation_loss(parts: CausalLMParts, windows: torch.Tensor, batch_size: int, device, autocast, run=None,
                    ctx=None) -> float:
    """Return the mean next-token loss over fixed held-out windows (equal-length, so a plain mean).

    ``run(fn, *args)`` calls the model (FSDP2's root unit when sharded). Under torchrun (``ctx``)
    each process evaluates its share of every round of ``world_size`` batches and the sums are
    reduced; a process with no windows left in the last round runs one window at weight 0, since
    every process must take part in each sharded forward.
    """
    run = run or (lambda fn, *args: fn(*args))
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    was_training = parts.model.training
    parts.model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size * world):
        chunk = windows[i + rank * batch_size : i + (rank + 1) * batch_size]
        weight = chunk.shape[0]
        if weight == 0:
            chunk = windows[:1]
        inputs, targets = next_token_batch(chunk.to(device))
        with autocast():
            logits = run(_next_token_logits, parts, inputs)
        total += multi_hot_cross_entropy(logits, targets).item() * weight
        count += weight
    parts.model.train(was_training)
    if world > 1:
        return ctx.mean(total) / ctx.mean(float(count))
    return total / count
