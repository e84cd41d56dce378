#!/usr/bin/env bash
# The GPU check (one prepared command for the device machine): correctness, speed, loss kernels,
# the peer loop, memory and a short TST-vs-baseline, each section writing one file under $OUT.
#
#   bash benchmarks/gpu/check.sh [DATA_DIR]        # on the GPU machine (OUT=... or /tmp/tstrain-gpu-check)
#   DRY_RUN=1 bash benchmarks/gpu/check.sh DIR     # the same code paths on this CPU at tiny sizes
#   SECTIONS=speed,kernels bash benchmarks/gpu/check.sh  # some sections only (KERNEL_VOCABS=, KERNEL_BAGS= narrow the kernels table)
#
# Installs from no index: the source tree is used in place (PYTHONPATH=src); wheels the device's
# image lacks (tomli-w; liger-kernel, the peer) are carried in .whl/ and installed into /tmp/site.
set -uo pipefail
OUT=${OUT:-/tmp/tstrain-gpu-check}
source "$(dirname "$0")/_env.sh"
"$PY" benchmarks/gpu/check.py --out "$OUT" --data "${1:-data/corpus}" ${BUDGET:+--budget $BUDGET} ${SECTIONS:+--sections $SECTIONS} 2>&1 | tee "$OUT/check.log"
