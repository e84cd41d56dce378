"""Read one ``tstrain compare`` command over its seeds: each seed's final val losses and equal-FLOPs gap, then the
gap over the seeds (``statistics.gap_reading``: the seeds' mean, its interval from each seed's evaluation noise and
the spread between seeds). Each DIR is the comparison dir of one seed. Nothing is trained.

    python benchmarks/compare_seeds.py DIR [DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tstrain.studies.report_text import interval_text
from tstrain.studies.statistics import gap_reading


def main(dirs: list[str]) -> None:
    results = [json.loads((Path(d) / "comparison.json").read_text()) for d in dirs]
    data = {(r.get("data") or {}).get("corpus_sha256") for r in results}
    if len(data) != 1:
        sys.exit(f"the comparisons read different corpora ({', '.join(map(str, sorted(data, key=str)))}): "
                 "combine seeds of one command only")
    print(f"Corpus hash {data.pop()}.\n\n| dir | baseline | TST | gap (95% interval) |\n| --- | --- | --- | --- |")
    for d, r in zip(dirs, results):
        g = r["equal_flops"]
        print(f"| {d} | {r['runs']['baseline']['final_val_loss']:.4f} | {r['runs']['tst']['final_val_loss']:.4f} | "
              f"{g['gap']:+.3f} ({interval_text(g['interval'], '+.3f')}, {g['reading']}) |")
    both = gap_reading([r["equal_flops_delta"] for r in results], [r["eval_noise"] for r in results])
    seeds = f"{both.seeds} seed" + ("s" if both.seeds > 1 else "")
    print(f"\nOver {seeds}: {both.gap:+.3f} ({interval_text(both.interval, '+.3f')}, {both.reading}).")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
