"""TST in a training loop of one's own: a small GPT in plain torch, no transformers.

    python examples/own_loop.py --data data/quick --steps 40
"""

import argparse
import json

import torch
from torch import nn

import tstrain
from tstrain.data.tokens import TokenData


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int = 64, layers: int = 2, heads: int = 4, seq_len: int = 64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        block = lambda: nn.TransformerEncoderLayer(d, heads, 4 * d, 0.0, batch_first=True, norm_first=True)  # noqa: E731
        self.blocks, self.norm = nn.ModuleList(block() for _ in range(layers)), nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def body(self, x):  # input embeddings (B, L, d) -> hidden states (B, L, d): the part TST leaves alone
        L = x.shape[1]
        x = x + self.pos(torch.arange(L, device=x.device))
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=x.device)
        for blk in self.blocks:
            x = blk(x, src_mask=mask, is_causal=True)
        return self.norm(x)


ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True, help="a dir made by `tstrain prepare-data`")
ap.add_argument("--steps", type=int, default=40)
args = ap.parse_args()

data = TokenData(args.data)
torch.manual_seed(0)
model = GPT(data.vocab_size)
# The TST part: a schedule of the two phases, the batches each step reads, and the loss.
schedule = tstrain.Schedule(steps=args.steps, batch_size=8, seq_len=64, bag_size=4, ratio=0.3)
batches = tstrain.BatchMaker(data.train, schedule, seed=0, vocab_size=data.vocab_size)
loss_fn = tstrain.TSTLoss(embedding=model.tok, body=model.body, head=model.head)
opt = tstrain.adamw(model, lr=3e-3)

losses = []
for step in range(schedule.steps):
    for group in opt.param_groups:
        group["lr"] = schedule.lr(step, peak=3e-3, warmup=10, decay_fraction=0.2)
    loss = loss_fn(batches.batch(step))  # bags of 4 in phase 1, next-token after the switch
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())
    print(f"step {step + 1} phase {schedule.phase(step)} loss {loss.item():.4f}")
print(json.dumps({"losses": losses}))
