"""Downstream evaluation through lm-eval-harness (EleutherAI), an optional extra: ``pip install 'tstrain[eval]'``.

The exported model is an ordinary Hugging Face checkpoint, so lm-eval's own ``hf`` backend runs
it, the way the paper's zero-shot HellaSwag / ARC / MMLU / PIQA figures were produced. Tasks are
lm-eval's built-in ones (their datasets download from the Hugging Face hub on first use), YAML
files or folders of YAML files given with ``include_paths``, and the project's own offline smoke
task ``tstrain_smoke_mc`` (``src/tstrain/evaltasks/``), which needs no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .checkpoint import CheckpointError

TASKS_DIR = Path(__file__).with_name("evaltasks")


def run_lm_eval(
    model_dir: str | Path,
    tasks: Sequence[str],
    include_paths: Sequence[str | Path] = (),
    num_fewshot: int | None = None,
    batch_size: int = 8,
    limit: float | None = None,
    device: str = "cpu",
    standard_tasks: bool = True,
) -> dict[str, Any]:
    """Return lm-eval's results for ``tasks`` on the model dir: ``{"results": {task: {metric: value}}, ...}``.

    ``standard_tasks=False`` skips indexing lm-eval's few hundred built-in task folders (faster
    when every task is local). ``limit`` caps the documents per task (a count, or a fraction < 1).
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError(
            "lm-eval-harness is not installed; install the optional extra with `pip install -e '.[eval]'` "
            "(or `pip install lm-eval`)"
        ) from None
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a Hugging Face model dir; make one with `tstrain export RUN --out DIR`")
    if not tasks:
        raise ValueError("no tasks given; e.g. --tasks tstrain_smoke_mc or --tasks hellaswag,arc_easy")
    manager = TaskManager(include_path=[str(TASKS_DIR), *map(str, include_paths)], include_defaults=standard_tasks)
    out = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(path), "dtype": "float32"},
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device,
        limit=limit,
        task_manager=manager,
        log_samples=False,
    )
    return {key: out[key] for key in ("results", "n-shot", "versions") if key in out}


def result_rows(results: dict[str, Any]) -> list[tuple[str, str, float, float | None]]:
    """Return ``(task, metric, value, stderr)`` rows of ``run_lm_eval``'s results, for printing."""
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, comma, filter_name = key.partition(",")  # metrics are keyed "acc,none"
            if not comma or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append((task, metric, float(value), float(stderr) if isinstance(stderr, (int, float)) else None))
    return rows
