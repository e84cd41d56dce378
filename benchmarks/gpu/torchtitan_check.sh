#!/usr/bin/env bash
# TST inside TorchTitan's trainer on one GPU: a short run of TorchTitan's Llama 3 debug model
# through the switch, printing each step's logged loss beside tstrain.TSTLoss's on the same weights
# and batch (float32), then a bf16 + torch.compile run's losses. Prints figures; claims nothing.
#
#   bash benchmarks/gpu/torchtitan_check.sh DATA_DIR             # on the GPU machine (OUT=... or /tmp/tstrain-torchtitan-check)
#   DRY_RUN=1 bash benchmarks/gpu/torchtitan_check.sh DATA_DIR   # the same path on this CPU (gloo), tiny, no compile
#
# DATA_DIR is a dir made by `tstrain prepare-data` (default data/quick, `make demo-quick` makes it).
# The device machine installs from no index: TorchTitan 0.3.0 and what it imports are carried as wheels
# in .whl/ (pip download --no-deps -d .whl torchtitan==0.3.0 tyro docstring_parser typeguard torchdata
# torch_checkpointing spmd_types==0.2.3 einops) and installed into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/tstrain-torchtitan-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DATA=${1:-data/quick}
if [ ! -f "$DATA/manifest.json" ]; then
    echo "benchmarks/gpu/torchtitan_check.sh: error: $DATA is not a prepared data dir (no manifest.json); make it with \`tstrain prepare-data --out $DATA ...\` (\`make demo-quick\` makes data/quick)" >&2
    exit 2
fi
if [ "${DRY_RUN:-0}" != 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ "${DRY_RUN:-0}" = 1 ]; then
    DEVICE=(--cpu) STEPS=4 SEQ=32 BATCH=4 COMPILE=()
else
    DEVICE=() STEPS=${STEPS:-40} SEQ=${SEQ:-512} BATCH=${BATCH:-8} COMPILE=(--compile.enable)
fi
run() {  # run NAME ARGS...: one TorchTitan training into $OUT/NAME, its log in $OUT/NAME.log
    local name=$1; shift
    "$PY" -m torch.distributed.run --nproc-per-node 1 --master-port "${PORT:-29531}" examples/torchtitan/train.py \
        "${DEVICE[@]}" --module tstrain.integrations.torchtitan --config tst_llama3_debugmodel \
        --dataloader.dataset_path "$DATA" --dump_folder "$OUT/$name" --training.steps "$STEPS" \
        --training.seq_len "$SEQ" --training.local_batch_size "$BATCH" --tst.ratio 0.5 --debug.seed 0 "$@" \
        > "$OUT/$name.log" 2>&1 || { tail -40 "$OUT/$name.log"; exit 1; }
}
echo "## TorchTitan's logged loss vs tstrain.TSTLoss, float32, $STEPS steps (the switch before step $((STEPS / 2 + 1)))"
run check --check --training.mixed_precision_param float32
"$PY" - "$OUT/check.log" <<'PYEOF'
import json, sys
result = json.loads([l for l in open(sys.argv[1]) if l.startswith('{"losses"')][-1])
worst = 0.0
print("| step | TorchTitan | tstrain.TSTLoss | relative difference |\n| --- | --- | --- | --- |")
for step, (ours, ref) in enumerate(zip(result["losses"], result["reference"]), 1):
    diff = abs(ours - ref) / abs(ref)
    worst = max(worst, diff)
    print(f"| {step} | {ours:.6f} | {ref:.6f} | {diff:.2e} |")
print(f"largest relative difference: {worst:.2e}")
PYEOF
if [ "${#COMPILE[@]}" -gt 0 ]; then
    echo "## bf16 parameters, torch.compile (model and loss): the logged losses"
    run compiled "${COMPILE[@]}"
    grep -o "step: *[0-9]* *.\[32mloss: *[0-9.]*" "$OUT/compiled.log" | sed 's/\x1b\[32m//' || true
fi
