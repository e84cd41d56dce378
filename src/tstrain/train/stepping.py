"""What the trainer steps with: its AdamW, the learning rate of a step, and the re-initialisation at the switch.

Built from the public core (``tstrain.optim.adamw``, ``Schedule.lr``), so that a loop of one's own steps as
this trainer does. Named apart from ``tstrain.optim``, the public optimizer it stands on.
"""

from __future__ import annotations

import torch

from ..config import Config
from ..model_parts import CausalLMParts
from ..optim import adamw
from ..schedule import Schedule


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """Return the run's AdamW (``optim.adamw``: weight decay on matrices only)."""
    o = cfg.optim
    return adamw(model, o.lr, weight_decay=o.weight_decay, betas=(o.beta1, o.beta2), eps=o.eps,
                 fused=device.type == "cuda")


def lr_at(cfg: Config, step: int, schedule: Schedule | None = None) -> float:
    """Return the LR of ``step``: one WSD schedule over the run, or one per phase if restarted.
    ``schedule``: the config's, when the caller holds it already (the trainer, every step)."""
    o = cfg.optim
    return (schedule or cfg.schedule).lr(step, o.lr, o.warmup_steps, o.decay_fraction, o.final_lr_fraction,
                                         restart=cfg.tst.restart_schedule)


@torch.no_grad()
def reinitialise_embeddings(parts: CausalLMParts, optimizer: torch.optim.Optimizer, cfg: Config) -> None:
    """Redraw the input embedding and LM head from N(0, init_std) and drop their AdamW state.

    The paper's negative control at the switch. The draw is seeded by (seed, switch step), so a
    run resumed from the switch checkpoint redraws the same weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed * 1_000_003 + cfg.switch_step)
        for p in {id(p): p for p in (parts.embedding.weight, parts.head.weight)}.values():
            p.normal_(0.0, cfg.model.init_std)
            optimizer.state.pop(p, None)
