"""Adapters of the public surface to the training stacks people already run.

- ``tstrain.integrations.hf_trainer``: ``TSTTrainer``, a Hugging Face ``Trainer`` (the
  ``[trainer]`` extra: transformers and accelerate).
- ``tstrain.integrations.torchtitan``: a TorchTitan extension (the ``torchtitan`` package).

Each uses ``Schedule``, ``BatchMaker`` and ``TSTLoss`` and nothing private.
"""
