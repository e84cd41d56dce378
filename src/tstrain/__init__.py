"""Token Superposition Training (TST) for the training loop you already run.

The public surface needs torch and numpy only:

- ``Schedule``: what each step trains on (phase, bag sizes, sequences, positions, variant, the
  tokens each sequence reads, the switch step, the learning rate), from the TST settings and the
  step count alone;
- ``BatchMaker``: the windows each step reads from any 1-D token array, as tstrain's trainer reads
  them (a pure function of the step; micro-batches and process slices);
- ``TSTLoss``: a micro-batch's loss for a Hugging Face causal LM or any model given as
  embedding, body and head;
- ``adamw``: the optimizer the trainer uses; and the method's functions themselves
  (``tstrain.superposition``).

``tstrain train`` is the first client of this surface: a loop built from it gets its numbers.
"""

from .batches import Batch, BatchMaker, Piece
from .loss import TSTLoss
from .model_parts import CallableParts, CausalLMParts
from .optim import adamw
from .schedule import Schedule, SequenceGroup, StepPlan, wsd_lr
from .superposition import (
    bag_embeddings,
    bag_weights,
    linear_multi_hot_cross_entropy,
    multi_hot_cross_entropy,
    superposition_batch,
    window_length,
)

__all__ = [
    "Schedule",
    "SequenceGroup",
    "StepPlan",
    "BatchMaker",
    "Batch",
    "Piece",
    "TSTLoss",
    "CausalLMParts",
    "CallableParts",
    "adamw",
    "wsd_lr",
    "bag_embeddings",
    "bag_weights",
    "multi_hot_cross_entropy",
    "linear_multi_hot_cross_entropy",
    "superposition_batch",
    "window_length",
]
