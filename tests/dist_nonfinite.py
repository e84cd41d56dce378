"""Run under torchrun by test_distributed: only rank 1 sees NaN gradients at step 3; all ranks must agree.

Usage: torchrun --nproc_per_node=2 tests/dist_nonfinite.py DATA_DIR OUT_DIR
"""

import os
import sys

import torch.distributed as dist

from conftest import NanGrad
from tstrain.config import load_config
from tstrain.errors import TrainingError
from tstrain.loss import TSTLoss
from tstrain.train.loop import train

data, out = sys.argv[1:3]
rank = int(os.environ["RANK"])
calls = {"n": 0}


def poisoned(*args):
    calls["n"] += 1
    loss = TSTLoss.__call__(*args)
    return NanGrad.apply(loss) if calls["n"] == 3 and rank == 1 else loss


dist.init_process_group("gloo")  # one group for both runs: train() leaves a caller's group open
for skip in (False, True):
    calls["n"] = 0
    cfg = load_config("tiny", overrides={"data.path": data, "train.steps": 6, "tst.ratio": 0.5, "log.progress": False,
                                         "train.eval_every": 0, "log.every": 1, "train.skip_nonfinite": skip})
    try:
        summary = train(cfg, f"{out}/skip-{skip}", loss_fn=poisoned)
        print(f"rank {rank} finished skip={skip}", flush=True)
    except TrainingError as e:
        print(f"rank {rank} stopped skip={skip}: {e}", flush=True)
dist.destroy_process_group()
