"""TST inside the Hugging Face Trainer, on one of tstrain's presets: the same numbers as `tstrain train`.

    python examples/hf_trainer.py --preset tiny --data data/quick --steps 40
    torchrun --nproc-per-node 2 examples/hf_trainer.py --preset tiny --data data/quick --steps 40   # gloo on CPU
"""

import argparse
import json
import tempfile

import torch
from transformers import TrainingArguments

import tstrain
from tstrain.config import load_config
from tstrain.data.tokens import TokenData
from tstrain.integrations.hf_trainer import TSTTrainer
from tstrain.models import build_model

ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="tiny")
ap.add_argument("--data", required=True, help="a dir made by `tstrain prepare-data`")
for flag, kind in [("steps", int), ("batch-size", int), ("seq-len", int), ("bag-size", int), ("ratio", float),
                   ("seed", int), ("grad-accum", int)]:
    ap.add_argument(f"--{flag}", type=kind)
ap.add_argument("--out", help="the Trainer's output dir (default: a temporary one)")
args = ap.parse_args()
flags = {"train.steps": args.steps, "train.batch_size": args.batch_size, "train.seq_len": args.seq_len,
         "tst.bag_size": args.bag_size, "tst.ratio": args.ratio, "train.seed": args.seed,
         "train.grad_accum": args.grad_accum}
data = TokenData(args.data)
cfg = load_config(args.preset, overrides={k: v for k, v in flags.items() if v is not None})
cfg = cfg.resolved_for(data.vocab_size)
o, tr = cfg.optim, cfg.train
if not torch.cuda.is_available():
    torch.set_flush_denormal(True)  # as tstrain's trainer does on CPU
torch.manual_seed(tr.seed)
model = build_model(cfg.model, cfg.model.vocab_size, tr.seq_len)

training_args = TrainingArguments(
    output_dir=args.out or tempfile.mkdtemp(), per_device_train_batch_size=1, gradient_accumulation_steps=tr.grad_accum,
    learning_rate=o.lr, weight_decay=o.weight_decay, adam_beta1=o.beta1, adam_beta2=o.beta2, adam_epsilon=o.eps,
    max_grad_norm=o.grad_clip, warmup_steps=o.warmup_steps, seed=tr.seed, save_strategy="no", report_to=[],
    lr_scheduler_kwargs={"decay_fraction": o.decay_fraction, "final_lr_fraction": o.final_lr_fraction},
    logging_steps=10, disable_tqdm=True, use_cpu=not torch.cuda.is_available(), ddp_find_unused_parameters=False)
schedule = tstrain.Schedule(steps=tr.steps, batch_size=tr.batch_size, seq_len=tr.seq_len, bag_size=cfg.tst.bag_size,
                            ratio=cfg.tst.ratio, variant=cfg.tst.variant, transition=cfg.tst.transition,
                            transition_steps=cfg.tst.transition_steps, expand=cfg.tst.expand)
trainer = TSTTrainer(model, training_args, tokens=data.train, schedule=schedule, seed=tr.seed,
                     loss_options={"weights": cfg.tst.weights, "fused": tr.fused_loss})
trainer.train()
if training_args.process_index == 0:
    print(json.dumps({"losses": trainer.step_losses}))
if torch.distributed.is_initialized():  # under torchrun: end the process group before the interpreter exits, or
    torch.distributed.destroy_process_group()  # gloo's threads can outlive it and abort the process at exit
