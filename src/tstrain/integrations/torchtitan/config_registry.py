"""Ready-made TST runs for ``torchtitan.train``: ``--module tstrain.integrations.torchtitan --config NAME``.

Each function returns a ``TSTTrainer.Config``; every field can then be overridden on the command
line (``--tst.bag_size 8 --training.steps 2000 --dataloader.dataset_path data/corpus``).
"""

from __future__ import annotations

from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.loss import ChunkedLossWrapper
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.models.llama3 import model_registry

from .data import TSTDataLoader, TSTSettings
from .loss import MultiHotLoss
from .model import BagEmbeddingConverter, CausalAttentionConverter
from .trainer import TSTTrainer


def tst_llama3(flavor: str, *, steps: int, local_batch_size: int, seq_len: int, lr: float, warmup: int,
               hf_assets_path: str = "", dataset_path: str = "") -> TSTTrainer.Config:
    """Return a TST run of TorchTitan's Llama 3 ``flavor``: s = 4, r = 0.3, linear decay over the last 20%.

    The model averages bags in its embedding and attends causally over each window (SDPA).
    """
    converters = [BagEmbeddingConverter.Config(), CausalAttentionConverter.Config()]
    return TSTTrainer.Config(
        model_spec=model_registry(flavor, converters=converters),
        tst=TSTSettings(bag_size=4, ratio=0.3),
        loss=ChunkedLossWrapper.Config(loss_fn=MultiHotLoss.Config()),
        dataloader=TSTDataLoader.Config(dataset_path=dataset_path),
        hf_assets_path=hf_assets_path,
        optimizer=default_adamw(lr=lr),
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=warmup, decay_ratio=0.2, decay_type="linear",
                                                  min_lr_factor=0.0),
        training=TrainingConfig(local_batch_size=local_batch_size, seq_len=seq_len, steps=steps,
                                disable_cuda_graphs=True),
        metrics=MetricsProcessor.Config(log_freq=1),
        parallelism=ParallelismConfig(),
        checkpoint=CheckpointManager.Config(interval=500, last_save_model_only=False),
    )


def tst_llama3_debugmodel() -> TSTTrainer.Config:
    """TorchTitan's debug model (6 layers, d = 256, vocabulary 2048), 100 steps of 8 sequences of 512."""
    return tst_llama3("debugmodel", steps=100, local_batch_size=8, seq_len=512, lr=8e-4, warmup=10)


def tst_llama3_8b() -> TSTTrainer.Config:
    """Llama 3 8B with TST, one sequence of 8192 per GPU (FSDP over all of them): set the data and tokenizer paths."""
    return tst_llama3("8B", steps=10_000, local_batch_size=1, seq_len=8192, lr=3e-4, warmup=200)
