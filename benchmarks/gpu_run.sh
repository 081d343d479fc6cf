#!/usr/bin/env bash
# The prepared GPU run (benchmarks/gpu_run.py has the details): on a bare CUDA PyTorch machine,
# from the repo root, with the offline kit (make offline-kit) beside the checkout:
#   bash benchmarks/gpu_run.sh OUT_DIR [--budget-s 480] [--kit build/offline-kit] [--skip sweep] [--plan]
# Exit status: 0 passed, 1 a step failed, 2 usage, 3 cannot run here (the reasons are printed).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash benchmarks/gpu_run.sh OUT_DIR [--budget-s 480] [--kit DIR] [--skip STEPS] [--plan]" >&2
    exit 2
fi
# the machine's own interpreter (the lent GPU's python3 holds its CUDA torch); ERPRM_PYTHON overrides
PY="${ERPRM_PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_run: cannot run here: no $PY on PATH (set ERPRM_PYTHON)" >&2
    exit 3
fi
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_run.py "$@"
