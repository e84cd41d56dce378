#!/usr/bin/env bash
# Every prepared GPU command in one go, each part into its own dir under $OUT:
#   doctor      `tstrain doctor` alone (doctor.txt, doctor.json): every loss path against float64 on the GPU, a tiny
#               train resumed bit for bit, the path `auto` takes after the Triton kernel's self-check (under a minute)
#   check       benchmarks/gpu/check.sh DATA_DIR: doctor and the cuda tests, speed, kernels vs Liger, the peer
#               loop, memory, a short compare (BUDGET seconds, 500 by default)
#   evidence    benchmarks/gpu/evidence.sh DATA_DIR: baseline vs TST on gpu-small (about 8 minutes)
#   torchtitan  benchmarks/gpu/torchtitan_check.sh QUICK_DATA: TST inside TorchTitan's trainer
#
#   bash benchmarks/gpu/all.sh [DATA_DIR [QUICK_DATA]]    # OUT=... (default /tmp/tstrain-gpu); PARTS=doctor,check
#
# DATA_DIR defaults to data/corpus (`make data/corpus/manifest.json`), QUICK_DATA to data/quick (`make demo-quick`).
# A part that fails is recorded in $OUT/parts.txt and the next one runs.
set -uo pipefail
OUT=${OUT:-/tmp/tstrain-gpu}
source "$(dirname "$0")/_env.sh"  # the repository root, $PY, the carried wheels and the source tree on PYTHONPATH
DATA=${1:-data/corpus}
QUICK=${2:-data/quick}
PARTS=${PARTS:-doctor,check,evidence,torchtitan}
for part in ${PARTS//,/ }; do  # every name checked before any part runs
    case $part in doctor|check|evidence|torchtitan) ;; *)
        echo "benchmarks/gpu/all.sh: error: no part named '$part'; PARTS takes doctor, check, evidence, torchtitan" >&2
        exit 2 ;;
    esac
done
: > "$OUT/parts.txt"
for part in ${PARTS//,/ }; do
    case $part in
        doctor) cmd=("$PY" -m tstrain doctor --json) ;;
        check) cmd=(env OUT="$OUT/check" bash benchmarks/gpu/check.sh "$DATA") ;;
        evidence) cmd=(env OUT="$OUT/evidence" bash benchmarks/gpu/evidence.sh "$DATA") ;;
        torchtitan) cmd=(env OUT="$OUT/torchtitan" bash benchmarks/gpu/torchtitan_check.sh "$QUICK") ;;
    esac
    echo "## $part" | tee -a "$OUT/parts.txt"
    start=$SECONDS
    if [ "$part" = doctor ]; then
        "${cmd[@]}" > "$OUT/doctor.json"
        status=$?
        [ -s "$OUT/doctor.json" ] && "$PY" -c 'import json, sys; from tstrain.doctor import format_report
print(format_report(json.load(open(sys.argv[1]))))' "$OUT/doctor.json" | tee "$OUT/doctor.txt"
    else
        "${cmd[@]}"
        status=$?
    fi
    echo "$part: exit $status in $((SECONDS - start)) s" | tee -a "$OUT/parts.txt"
done
