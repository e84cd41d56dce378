"""What a training step reads: one row per sequence of its global batch (``tstrain batch``).

The reader's layout made visible, as OLMo's inspect-train-data does for its runs: where in the
training split (its shards read as one sequence) each sequence starts, how many tokens it reads,
its bag size and phase, and how many of the step's sequences continue one another in the corpus
(a sign of a correlated batch).
"""

from __future__ import annotations

from typing import Any

from .batches import BatchMaker
from .config import Config, ConfigError
from .data.tokens import TokenData


def step_layout(cfg: Config, data: TokenData, step: int, text_chars: int = 0) -> dict[str, Any]:
    """Return step ``step``'s sequences (offset, inputs, window, bag size, phase) and a summary.

    ``text_chars`` > 0 adds the decoded start of each sequence, cut to that many characters.
    """
    if not 0 <= step < cfg.train.steps:
        raise ConfigError(f"--step must be in [0, {cfg.train.steps}) for a run of {cfg.train.steps} steps; got {step}")
    maker = BatchMaker(data.train, cfg.schedule, cfg.train.seed)  # the trainer's reader
    decode = _decoder(data) if text_chars else None
    sequences = []
    for group, offsets in maker.reader.layout(step):
        for offset in offsets.tolist():
            row = {"index": len(sequences), "offset": offset, "input_tokens": group.stride,
                   "window_tokens": group.window, "bag_size": group.bag_size, "phase": 1 if group.bag_size > 1 else 2}
            if decode:
                row["text"] = decode(data.train[offset : offset + group.stride])[:text_chars]
            sequences.append(row)
    starts = {row["offset"] for row in sequences}
    continuing = sum(row["offset"] + row["input_tokens"] in starts for row in sequences)
    return {"step": step, "switch_step": cfg.switch_step, "sequences": sequences,
            "data_tokens": cfg.schedule.tokens_read(step), "epoch": maker.epochs(step),
            "continuing_pairs": continuing, "corpus_blocks": maker.reader.num_blocks}


def _decoder(data: TokenData):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(data.path / "tokenizer.json"))
    return lambda ids: tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def format_layout(layout: dict[str, Any]) -> str:
    """Return the layout as a table a person reads: one line per sequence, then the summary."""
    rows = layout["sequences"]
    lines = [f"step {layout['step']} (switch at step {layout['switch_step']}): {len(rows)} sequences, "
             f"{layout['data_tokens']:,} data tokens, epoch {layout['epoch']:.4f}",
             f"{'seq':>4} {'phase':>5} {'bag':>4} {'offset':>12} {'inputs':>7} {'window':>7}"
             + ("  text" if rows and "text" in rows[0] else "")]
    for r in rows:
        text = "  " + repr(r["text"]) if "text" in r else ""
        lines.append(f"{r['index']:>4} {r['phase']:>5} {r['bag_size']:>4} {r['offset']:>12,} {r['input_tokens']:>7} "
                     f"{r['window_tokens']:>7}{text}")
    lines.append(f"{layout['continuing_pairs']} of the step's sequences continue another of them in the corpus "
                 f"(offset = another's offset + its inputs; {layout['corpus_blocks']:,} blocks in the corpus)")
    return "\n".join(lines)
