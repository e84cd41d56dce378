"""Re-read a finished scale study from its saved runs with this version's readings (no training).

    python benchmarks/reread_scale.py benchmarks/results/scale/runs benchmarks/results/scale

rewrites ``scale.md``, ``scale.json``, ``scale_gap.png`` and ``scale_step_value_course.png`` in the
report dir (default: the runs dir) and prints ``scale.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tstrain.studies.scale import read_study


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python benchmarks/reread_scale.py RUNS_DIR [REPORT_DIR]", file=sys.stderr)
        return 2
    report = Path(argv[-1])
    read_study(argv[0], report)
    print((report / "scale.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
