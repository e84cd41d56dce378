"""Read the equal-loss speedup of one ``tstrain compare --equal-loss`` command over its seeds.

Each DIR is the comparison dir of one seed (the same command with ``--seed K``). Prints markdown:
each seed's ladder and reading, then the speedup over the seeds (``ladder.over_seeds``: the mean final
val losses, the seed spread added to the noise). Nothing is trained.

    python benchmarks/equal_loss.py DIR [DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tstrain.experiments.ladder import over_seeds


def main(dirs: list[str]) -> None:
    readings = []
    for d in dirs:
        result = json.loads((Path(d) / "comparison.json").read_text())
        if "equal_loss" not in result:
            sys.exit(f"{d}/comparison.json holds no equal-loss reading: run compare with --equal-loss")
        readings.append(result["equal_loss"])
        eq = result["equal_loss"]
        data = result.get("data") or {}
        print(f"## {d}\n\nCorpus hash {data.get('corpus_sha256')}. Noise of one final value "
              f"{eq['noise']:.4f} nats ({eq['noise_from']}).\n")
        print("| run | steps | compute (x TST's) | final val loss |\n| --- | --- | --- | --- |")
        for g in eq["rungs"]:
            print(f"| baseline | {g['steps']} | {g['multiple']:.2f} | {g['val_loss']:.4f} |")
        print(f"| TST | {eq['tst']['steps']} | 1.00 | {eq['tst']['val_loss']:.4f} |\n\n{eq['reading']}\n")
    if len(readings) > 1:
        both = over_seeds(readings)
        per = ", ".join("past the ladder" if s is None else f"{s:.2f}x" for s in both["per_seed"])
        print(f"## Over {both['seeds']} seeds\n\nPer seed: {per}. Mean final val losses, the seed spread added to "
              f"the noise ({both['noise']:.4f} nats a final value):\n\n{both['reading']}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
