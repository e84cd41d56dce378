#!/usr/bin/env bash
# The GPU evidence run (one prepared command for the device machine, about 8 minutes of one
# H100/H200): baseline vs TST at s=2 r=0.2 and s=4 r=0.3, 3000 steps each at equal FLOPs, on the
# gpu-small preset (25M non-embedding parameters), each run within one epoch of the carried corpus.
# What comes back ($OUT, 7 files): evidence.md, scale.json, curves.png, evidence.log and each run's
# metrics.
#
#   bash benchmarks/gpu/evidence.sh [DATA_DIR]             # on the GPU machine (OUT=... or /tmp/tstrain-evidence)
#   OUT=DIR DRY_RUN=1 bash benchmarks/gpu/evidence.sh DIR  # the same path on this CPU: tiny preset, a few steps
#   STEPS=3000 LRS=1e-3,2e-3,4e-3 TUNE_STEPS=600 ...       # run length and the baseline LR tuning (LRS= : none)
#   SET="train.compile=off train.batch_size=32" ...        # config fields for every run (SECTION.FIELD=VALUE)
#   COMMIT=abc1234 ...                                     # names the source where the tree comes without git
#
# Installs from no index: the source tree is used in place (PYTHONPATH=src); wheels the device's
# image lacks (tomli-w) are carried in .whl/ and installed into /tmp/site.
set -uo pipefail
OUT=${OUT:-/tmp/tstrain-evidence}
source "$(dirname "$0")/_env.sh"
"$PY" benchmarks/gpu/evidence.py --out "$OUT" --data "${1:-data/corpus}" 2>&1 | tee "$OUT/evidence.log"
