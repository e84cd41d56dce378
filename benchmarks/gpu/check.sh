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
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/tstrain-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ "${DRY_RUN:-0}" != 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PY" benchmarks/gpu/check.py --out "$OUT" --data "${1:-data/corpus}" ${BUDGET:+--budget $BUDGET} ${SECTIONS:+--sections $SECTIONS} 2>&1 | tee "$OUT/check.log"
