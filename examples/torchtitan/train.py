"""Train with TST inside TorchTitan: ``torchtitan.train``'s entry point, plus two switches for checking it.

    torchrun --nproc-per-node 8 examples/torchtitan/train.py \\
        --module tstrain.integrations.torchtitan --config tst_llama3_debugmodel \\
        --dataloader.dataset_path data/corpus

Every other argument is TorchTitan's (``--training.steps``, ``--tst.ratio``, ``--parallelism.*``...).

- ``--cpu``: run on the CPU with gloo. TorchTitan has no device setting (it takes CUDA when it finds
  no accelerator), so this answers its device probe with the CPU and gives ``torch.cpu`` the few
  memory queries its metrics make. For smoke tests and CI, not for training.
- ``--check``: one process, float32; before each step, compute ``tstrain.TSTLoss`` on the same weights
  and on ``tstrain.BatchMaker``'s batch of that step, and print last one JSON line
  ``{"losses": [...], "reference": [...]}``: TorchTitan's logged loss of each step and tstrain's.

On a torch without ``torch.distributed.set_timeout`` (2.13 and older; TorchTitan 0.3.0 calls it
after the first step) it is filled in with the older ``_set_pg_timeout``, which does the same.
"""

import json
import sys
import types

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def use_the_cpu() -> None:
    """Make TorchTitan's device probe (evaluated when it is imported) answer ``cpu``."""
    import torch._utils

    torch._utils._get_available_device_type = lambda: "cpu"
    torch.cpu.current_device = lambda: 0  # barriers take device indices
    answers = {"get_device_name": lambda device=None: "cpu",
               "get_device_properties": lambda device=None: types.SimpleNamespace(name="cpu", total_memory=1 << 40),
               "reset_peak_memory_stats": lambda device=None: None, "empty_cache": lambda: None,
               "memory_stats": lambda device=None: {}}
    for name, answer in answers.items():
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, answer)


def reference_loss(trainer, plain: torch.nn.Module, maker, step: int) -> float:
    """Return ``tstrain.TSTLoss`` of step ``step``'s whole batch (from ``maker``) on the trainer's current weights.

    ``plain`` is an unwrapped copy of the model (no FSDP, no DTensors) that takes those weights.
    """
    import tstrain

    weights = trainer.model_parts[0].state_dict()
    plain.load_state_dict({k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in weights.items()})

    def body(embeds):
        h = embeds
        for layer in plain.layers.values():
            h = layer(h, None, None)
        return plain.norm(h)

    tst = trainer.config.tst
    loss = tstrain.TSTLoss(embedding=plain.tok_embeddings.weight, body=body, head=plain.lm_head,
                           weights=tst.weights, mi_exponent=tst.mi_exponent)
    with torch.no_grad():
        return float(loss(maker.batch(step).to(trainer.device)))


def train_and_check(argv: list[str]) -> None:
    """Train as ``torchtitan.train`` does, recording each step's loss and tstrain's reference loss."""
    from torchtitan.config import ConfigManager
    from torchtitan.tools.logging import init_logger

    import tstrain
    from tstrain.integrations.torchtitan.data import open_tokens

    init_logger()
    config = ConfigManager().parse_args(argv)
    if config.training.mixed_precision_param != "float32":
        raise SystemExit("--check compares float32 computations: add --training.mixed_precision_param float32")
    config.metrics.log_freq = 1  # the check compares every step's loss
    trainer = config.build()
    if len(trainer.model_parts) != 1:
        raise SystemExit("--check needs the whole model in each process: it does not run under pipeline parallelism")
    with torch.device(trainer.device):
        plain = trainer.model_config.build()
    tokens, _ = open_tokens(config.dataloader.dataset_path)
    maker = tstrain.BatchMaker(tokens, trainer.dataloader.schedule, config.dataloader.seed)
    losses, reference = [], []
    log, train_step = trainer.metrics_processor.log, trainer.train_step

    def logged(step, loss, *args, **kwargs):
        losses.append(loss)
        return log(step, loss, *args, **kwargs)

    def checked_step(data_iterator):
        reference.append(reference_loss(trainer, plain, maker, trainer.step - 1))  # the trainer counts from 1
        return train_step(data_iterator)

    trainer.metrics_processor.log, trainer.train_step = logged, checked_step
    try:
        trainer.train()
    finally:
        trainer.close()
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps({"losses": losses, "reference": reference}))


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--cpu" in args:
        args.remove("--cpu")
        use_the_cpu()
    if not hasattr(dist, "set_timeout"):
        dist.set_timeout = dist.distributed_c10d._set_pg_timeout
    if "--check" in args:
        args.remove("--check")
        train_and_check(args)
    else:
        from torchtitan.train import main

        sys.argv = [sys.argv[0], *args]
        main()
