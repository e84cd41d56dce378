"""Recording a run: metrics.jsonl rows, TensorBoard scalars, the progress bar, and MFU.

MFU here is model FLOPs per second (see ``models.flops_per_position``: counted on the positions
the transformer sees, so a phase-1 step and a baseline step cost the same) over the device's peak.
Data tokens per second are reported separately: in phase 1 they run ``s`` times the positions.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any

import torch

from ..errors import RecordError
from ..fileio import open_new, refuse_link, write_failed, write_text_atomic
from .run_dir import METRICS, TENSORBOARD, WANDB_ID

# Dense bf16 peak FLOP/s of common accelerators (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "B200": 2250e12,
    "L4": 121e12,
    "A10G": 125e12,
}


def device_peak_flops(device: torch.device, configured: float = 0.0) -> float:
    """Return the configured peak FLOP/s, else a known GPU's bf16 peak, else 0 (MFU not reported)."""
    if configured > 0:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in PEAK_BF16_FLOPS.items():
            if key in name:
                return peak
    return 0.0


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Return the rows of a JSONL file of metrics, without a partial last line that a killed writer may leave.

    Every row is an object with an integer ``step``; a garbled line before the last (an edit, not a kill) raises
    ``RecordError`` naming the file and the line."""
    with open(path, "rb") as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for n, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError as e:  # JSON or UTF-8
            if n == len(lines) - 1:
                break
            raise RecordError(f"{path}:{n + 1} is not valid JSON ({e}): the file was edited; remove that line "
                              "(or restore the file) and run again") from None
        if not isinstance(row, dict) or type(row.get("step")) is not int:
            raise RecordError(f"{path}:{n + 1} is not a metrics row (an object with an integer 'step'): the file "
                              "was edited; remove that line (or restore the file) and run again")
        rows.append(row)
    return rows


def json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """Return ``row`` with non-finite floats (a skipped step's NaN loss) as None: JSON has no NaN, so a bare
    ``NaN`` would make the line unreadable to every other JSON reader."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl``; mirrors scalars to TensorBoard and W&B.

    ``wandb`` (``{"project", "name", "config"}``) opens a Weights & Biases run whose id is kept in
    ``RUN/wandb_id``, so a resumed run continues the same W&B run (``WANDB_MODE=offline`` works
    without an account). W&B keeps the first value logged at a step: the rows a resumed run logs
    again are the same numbers (resume is exact), and W&B drops them with a warning.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int | None = None, enabled: bool = True,
                 wandb: dict[str, Any] | None = None):
        self.path = run_dir / METRICS
        self.file = self.tb = self.wb = None
        if not enabled:  # processes other than rank 0 of a torchrun job write nothing
            return
        refuse_link(self.path)
        if resume_step is not None and self.path.exists():
            # Rows past the checkpoint are logged again by the resumed run: drop them.
            kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.file = open_new(self.path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / TENSORBOARD))
        if wandb is not None:
            self.wb = open_wandb_run(run_dir, wandb, resumed=resume_step is not None)

    def write(self, row: dict[str, Any]) -> None:
        if self.file is None:
            return
        try:
            self.file.write(json.dumps(json_safe(row)) + "\n")
            self.file.flush()
        except OSError as e:
            raise write_failed(self.path, e, "the rows and checkpoints written before are kept; continue with "
                               "--resume") from None
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, row["step"])
        if self.wb is not None:
            self.wb.log(scalars, step=row["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def open_wandb_run(run_dir: Path, settings: dict[str, Any], resumed: bool):
    """Start (or, for a resumed run, continue) the W&B run of ``run_dir``; return it."""
    try:
        import wandb
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError("log.wandb needs the wandb package: pip install 'tstrain[wandb]' "
                          "(or set log.wandb=false)") from None
    id_file = run_dir / WANDB_ID
    run_id = id_file.read_text().strip() if resumed and id_file.is_file() else secrets.token_hex(6)
    write_text_atomic(id_file, run_id + "\n")
    return wandb.init(project=settings["project"], name=settings["name"], id=run_id, resume="allow",
                      config=settings["config"], dir=str(run_dir))


class Progress:
    """A tqdm bar over the steps showing phase, loss, data tokens/s and ETA."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled)

    def update(self, phase: int, loss: float, tokens_per_s: float) -> None:
        self.bar.set_postfix_str(f"phase {phase} loss {loss:.3f} {tokens_per_s:,.0f} tok/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
