"""A TST job for TorchTitan, every section spelled out: copy it and edit it for your run.

TorchTitan 0.3.0 reads its job config from a Python function (a "config registry"), not from a
TOML file; any field can still be overridden on the command line. Run this one with

    PYTHONPATH=examples/torchtitan torchrun --nproc-per-node 8 examples/torchtitan/train.py \\
        --module tst_job --config tst_job --dataloader.dataset_path data/corpus
"""

from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.loss import ChunkedLossWrapper
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.models.llama3 import model_registry

from tstrain.integrations.torchtitan import (
    BagEmbeddingConverter,
    CausalAttentionConverter,
    MultiHotLoss,
    TSTDataLoader,
    TSTSettings,
    TSTTrainer,
)


def tst_job() -> TSTTrainer.Config:
    """Llama 3 debug model, bags of 4 for the first 30% of 1,000 steps, then next-token prediction."""
    return TSTTrainer.Config(
        # The model: TorchTitan's Llama 3, its embedding averaging bags, causal attention over each window.
        # Add Float8LinearConverter.Config() (and its needs: torchao, an H100 or newer) for float8.
        model_spec=model_registry("debugmodel",
                                  converters=[BagEmbeddingConverter.Config(), CausalAttentionConverter.Config()]),
        # TST: bag size s, the share r of the steps on bags, the variant, the transition, the expansion.
        tst=TSTSettings(bag_size=4, ratio=0.3, variant="both", transition="hard", expand="length"),
        # The data: a dir made by `tstrain prepare-data` (its tokenizer.json is the tokenizer), or a .npy of ids.
        dataloader=TSTDataLoader.Config(dataset_path="data/corpus", seed=0),
        hf_assets_path="",  # empty: the data dir's tokenizer
        # The multi-hot cross entropy, the head applied chunk by chunk over positions.
        loss=ChunkedLossWrapper.Config(num_chunks=8, loss_fn=MultiHotLoss.Config()),
        # One optimizer and one LR schedule across the switch (warmup, constant, linear decay).
        optimizer=default_adamw(lr=8e-4),
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=50, decay_ratio=0.2, decay_type="linear",
                                                  min_lr_factor=0.0),
        # B sequences of L positions per step in both phases (phase 1 reads s times the tokens).
        # CUDA graphs replay one shape, and the shapes change at the switch.
        training=TrainingConfig(local_batch_size=8, global_batch_size=-1, seq_len=1024, steps=1000,
                                disable_cuda_graphs=True),
        # FSDP over all ranks by default; tensor parallelism needs the partial_dtensor backend.
        parallelism=ParallelismConfig(data_parallel_shard_degree=-1, tensor_parallel_degree=1,
                                      spmd_backend="spmd_types"),
        compile=CompileConfig(enable=False, components=["model", "loss"]),
        metrics=MetricsProcessor.Config(log_freq=10),
        checkpoint=CheckpointManager.Config(enable=False, interval=500, last_save_model_only=False),
    )
