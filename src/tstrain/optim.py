"""The optimizer tstrain trains with: AdamW, weight decay on matrices only (not norms or biases).

Public so that a loop of one's own, or the Hugging Face ``Trainer`` integration, steps exactly as
tstrain's trainer does. Torch only.
"""

from __future__ import annotations

import torch


def adamw(model: torch.nn.Module, lr: float, *, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
          eps: float = 1e-8, fused: bool | None = None) -> torch.optim.AdamW:
    """Return AdamW over ``model``'s trainable parameters, decaying the matrices only.

    ``fused`` defaults to the fused kernel when the weights live on a GPU.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    if fused is None:
        fused = bool(params) and params[0].device.type == "cuda"
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=betas, eps=eps, fused=fused,
    )
