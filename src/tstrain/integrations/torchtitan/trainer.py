"""TST inside TorchTitan's trainer: its config gains a ``tst`` section, and its components do the rest.

``TSTTrainer`` is TorchTitan's ``Trainer`` with one addition to its config, ``tst`` (bag size,
ratio, variant, transition, expansion). Everything TST does happens in components the trainer
already has: the dataloader (``TSTDataLoader``: bags, windows, the switch), the loss
(``MultiHotLoss``) and the model's input embedding (``BagEmbedding``, put in by
``BagEmbeddingConverter``). The optimizer, the LR schedule, checkpoints, FSDP, tensor and context
parallelism, compilation and float8 are TorchTitan's own, one of each across the switch. The
trainer refuses, in one line each, the settings these components cannot honour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchtitan.components.loss import ChunkedLossWrapper
from torchtitan.tools.logging import logger
from torchtitan.trainer import Trainer

from .data import RUN_NAMES, TSTDataLoader, TSTSettings, global_batch
from .loss import MultiHotLoss
from .model import BagEmbedding


def loss_config(config: TSTTrainer.Config):
    """Return the config of the loss itself (inside a ``ChunkedLossWrapper`` or not)."""
    return config.loss.loss_fn if isinstance(config.loss, ChunkedLossWrapper.Config) else config.loss


def config_problems(config: TSTTrainer.Config) -> list[str]:
    """Return what keeps ``config`` from training with TST, each with its fix (empty when fine): the TST
    settings against the run (tstrain's own rules, ``TSTSettings.run_rules``), then what these components
    cannot carry."""
    tst, t = config.tst, config.training
    loss = loss_config(config)
    bags_in = tst.bag_size > 1 and tst.ratio > 0 and tst.variant != "output"
    # The data-parallel degree is known once TorchTitan builds its mesh; the rules ask only that a batch holds a
    # sequence, which one rank's does exactly when all ranks' do.
    checks = tst.run_rules(t.steps, global_batch(t, dp_world_size=1), t.seq_len, RUN_NAMES) + [
        (tst.transition in ("hard", "step-down"),
         f"tst.transition={tst.transition!r}: a blend mixes bag and token sequences in one micro-batch, which "
         "TorchTitan's one input tensor cannot carry; use hard or step-down"),
        (isinstance(config.dataloader, TSTDataLoader.Config), "the dataloader must be TSTDataLoader.Config"),
        (isinstance(loss, MultiHotLoss.Config),
         "the loss must be MultiHotLoss.Config (alone or as ChunkedLossWrapper.Config's loss_fn)"),
        (not bags_in or isinstance(getattr(config.model_spec.model, "tok_embeddings", None), BagEmbedding.Config),
         "the model's tok_embeddings must average bags: build the model spec with "
         "converters=[BagEmbeddingConverter.Config()]"),
        (tst.ratio == 0 or tst.bag_size == 1 or config.training.disable_cuda_graphs,
         "CUDA graphs replay one shape, but the batch changes shape at the switch: "
         "set --training.disable_cuda_graphs"),
        (config.parallelism.tensor_parallel_degree == 1 or config.parallelism.spmd_backend == "partial_dtensor",
         "under tensor parallelism the spmd_types backend hands the loss vocabulary shards as plain tensors, "
         "which the multi-hot loss cannot score: set --parallelism.spmd_backend partial_dtensor"),
        (tst.expand == "length" or config.parallelism.pipeline_parallel_degree == 1,
         "pipeline parallelism keeps one micro-batch shape, which tst.expand=batch changes at the switch: "
         "use tst.expand=length"),
    ]
    return [message for ok, message in checks if not ok]


class TSTTrainer(Trainer):
    """TorchTitan's ``Trainer`` training with Token Superposition: bags for the first ``tst.ratio`` of
    the steps, then next-token prediction, with one optimizer and one LR schedule throughout."""

    @dataclass(kw_only=True, slots=True)
    class Config(Trainer.Config):
        tst: TSTSettings = field(default_factory=TSTSettings)

    def __init__(self, config: Config):
        problems = config_problems(config)
        if problems:
            raise ValueError(problems[0])
        config.dataloader.tst = loss_config(config).tst = config.tst
        config.dataloader.training = config.training
        config.dataloader.vocab_size = config.model_spec.model.vocab_size
        if not config.hf_assets_path:  # a prepared data dir keeps the tokenizer that made it
            config.hf_assets_path = config.dataloader.dataset_path or ""
        super().__init__(config)
        self.schedule = self.dataloader.schedule
        logger.info(f"TST: {self.schedule.switch_step} of {self.schedule.steps} steps on bags of "
                    f"{config.tst.bag_size} ({config.tst.variant}, {config.tst.transition}), the switch before step "
                    f"{self.schedule.switch_step + 1}")
