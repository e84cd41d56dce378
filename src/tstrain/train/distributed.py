"""Running one job on several processes: torchrun's environment, FSDP2 sharding and reductions.

``torchrun --nproc_per_node=K -m tstrain train ...`` starts K processes that each call ``train``.
Each process builds the same model from the same seed, then ``fully_shard`` (FSDP2) splits it:
one unit per decoder layer plus a root unit holding the rest (embedding, final norm, head). NCCL
carries the collectives on GPUs, gloo on CPU; FSDP2 runs on both (verified on CPU with gloo).

TST feeds averaged embeddings to the transformer body and calls the head itself, so the model's
own ``forward`` is never called. FSDP2 gathers a unit's parameters around that unit's ``forward``;
the root unit is therefore a thin module whose ``forward`` runs the whole loss function
(:class:`Root`), so the embedding and head weights are whole while the loss reads them.

A process started without torchrun (or with one process) gets :class:`Single`: no process group,
no wrapping, the exact single-process numbers of before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .activation_checkpointing import decoder_layers


def launched_by_torchrun() -> bool:
    """Return whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Single:
    """One process: every collective is the identity."""

    rank, world_size, distributed = 0, 1, False

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, model: nn.Module) -> Callable[..., Any]:
        """Return ``run(fn, *args)``, which calls ``fn(*args)`` where the model's weights are whole."""
        return lambda fn, *args: fn(*args)

    def grad_sync(self, enabled: bool) -> None:
        """Turn gradient reduction across processes on or off (off between accumulated micro-batches)."""

    def mean(self, value: float) -> float:
        return value

    def agree(self, obj: Any) -> Any:
        """Return rank 0's ``obj`` on every process."""
        return obj

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class Root(nn.Module):
    """FSDP2's root unit: its ``forward`` runs a function of the model while the root weights are gathered."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class Distributed(Single):
    """One of ``world_size`` processes started by torchrun, joined in the default process group."""

    distributed = True

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)  # one GPU per process
            torch.cuda.set_device(device)
        super().__init__(device)
        self.owns_group = not dist.is_initialized()  # a caller's own process group is left to the caller
        if self.owns_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    device_id=device if device.type == "cuda" else None)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.root: nn.Module | None = None

    def shard(self, model: nn.Module) -> Callable[..., Any]:
        from torch.distributed.fsdp import fully_shard

        for layer in decoder_layers(model):
            fully_shard(layer)
        self.root = fully_shard(Root(model))
        return self.root

    def grad_sync(self, enabled: bool) -> None:
        self.root.set_requires_gradient_sync(enabled)

    def mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        self.dist.all_reduce(t)
        return t.item() / self.world_size

    def agree(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        if self.owns_group and self.dist.is_initialized():
            self.dist.destroy_process_group()


def setup(device: torch.device) -> Single:
    """Return the process context: :class:`Distributed` under torchrun with K > 1, else :class:`Single`."""
    return Distributed(device) if launched_by_torchrun() else Single(device)


def check_batch(batch_size: int, grad_accum: int, world_size: int) -> None:
    """Raise ConfigError unless the global batch splits evenly over processes and micro-batches."""
    if batch_size % (world_size * grad_accum):
        raise ConfigError(
            f"train.batch_size ({batch_size}) must be a multiple of processes ({world_size}) x train.grad_accum "
            f"({grad_accum}) = {world_size * grad_accum}: every process reads an equal slice of each global batch. "
            "Change the batch size, the accumulation or --nproc_per_node"
        )


def local(t: torch.Tensor) -> torch.Tensor:
    """Return this process's part of a (possibly sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_value(t: torch.Tensor) -> float:
    """Return a scalar that may be a DTensor (e.g. FSDP2's global grad norm) as a float."""
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)
