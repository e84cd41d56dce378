# Sourced by check.sh and evidence.sh (with $OUT set): run from the repository root, make $OUT, pick
# $PY, install the wheels carried in .whl/ into /tmp/site from no index, and put the source tree on
# PYTHONPATH.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ "${DRY_RUN:-0}" != 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
