"""Run under torchrun by test_distributed: a Trainer built with no context, as a Python caller builds one.

Usage: torchrun --nproc_per_node=2 tests/dist_trainer.py DATA_DIR OUT_DIR OVERRIDES_JSON
"""

import json
import os
import sys

from tstrain.config import load_config
from tstrain.train.loop import Trainer

data, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = load_config("tiny", overrides={"data.path": data, "log.progress": False, **overrides})
summary = Trainer(cfg, out).fit()
print(f"rank {os.environ['RANK']} finished: {summary.final_val_loss}", flush=True)
