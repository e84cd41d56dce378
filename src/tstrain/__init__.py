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

import importlib

# Each public name and the module that defines it, loaded on first use (PEP 562): the command line
# imports this package too, and its flags and help need no torch.
_HOMES = {
    "Schedule": "schedule", "SequenceGroup": "schedule", "StepPlan": "schedule",
    "BatchMaker": "batches", "Batch": "batches", "Piece": "batches",
    "TSTLoss": "loss",
    "CausalLMParts": "model_parts", "CallableParts": "model_parts",
    "adamw": "optim", "wsd_lr": "schedule",
    "bag_embeddings": "superposition", "bag_weights": "superposition",
    "multi_hot_cross_entropy": "superposition", "linear_multi_hot_cross_entropy": "superposition",
    "superposition_batch": "superposition", "window_length": "schedule", "TSTSettings": "schedule",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'tstrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = list(_HOMES)
