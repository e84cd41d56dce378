"""Token Superposition Training as a TorchTitan extension.

Run it with TorchTitan's own entry point (``-m torchtitan.train``, or on torch 2.13, whose
``torch.distributed`` lacks the ``set_timeout`` TorchTitan 0.3.0 calls,
``examples/torchtitan/train.py``)::

    torchrun --nproc-per-node 8 examples/torchtitan/train.py \\
        --module tstrain.integrations.torchtitan --config tst_llama3_debugmodel \\
        --dataloader.dataset_path data/corpus --tst.bag_size 4 --tst.ratio 0.3

``config_registry`` holds ready-made runs; ``TSTTrainer`` adds the ``tst`` section to TorchTitan's
config; ``TSTDataLoader``, ``MultiHotLoss`` and ``BagEmbedding`` (via ``BagEmbeddingConverter``)
are the components that carry the bags and the switch; ``CausalAttentionConverter`` gives the
model plain causal attention over each window. Built on ``tstrain.BatchMaker``,
``tstrain.multi_hot_cross_entropy`` and ``tstrain.superposition_batch``; needs ``torchtitan``.
"""

from .data import TSTDataLoader, TSTSettings
from .loss import MultiHotLoss
from .model import BagEmbedding, BagEmbeddingConverter, CausalAttentionConverter
from .trainer import TSTTrainer

__all__ = ["TSTTrainer", "TSTSettings", "TSTDataLoader", "MultiHotLoss", "BagEmbedding", "BagEmbeddingConverter",
           "CausalAttentionConverter"]
