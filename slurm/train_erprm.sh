#!/bin/bash
# Train an ER-PRM with Slurm: one task per GPU, any number of 8-GPU nodes.
#
#   sbatch slurm/train_erprm.sh conf/erprm_mistral_7b.yaml [key=value ...]
#   sbatch --nodes=4 slurm/train_erprm.sh conf/erprm_llama3_8b.yaml optim.lr=2e-6
#   ERPRM_CONTAINER_IMAGE=nemo-erprm.sqsh ERPRM_CONTAINER_MOUNTS=/data:/data sbatch slurm/train_erprm.sh ...
#
# Rendezvous: every task runs `python -m nemo_erprm.train`; Lightning's SLURM environment
# reads the rank, local rank and node list from Slurm (SLURM_PROCID, SLURM_LOCALID,
# SLURM_NODELIST); MASTER_ADDR is the first node, MASTER_PORT derives from the job id.
#
# Time limit and pre-emption (our handler, not Lightning's auto-requeue, which is off):
# Slurm sends USR1 to this batch script 300 s before the limit (--signal=B:USR1@300). The
# trap forwards it to the training tasks (through srun), which finish the current step,
# write a checkpoint and exit 0; the script then requeues the job (scontrol requeue). The
# requeued job runs this script again with the same arguments, and the training entry
# resumes from the newest checkpoint of the run folder. SIGTERM (scancel, pre-emption with
# a grace period) also checkpoints, but does not requeue: a cancelled job stays cancelled.
#
# Environment: ERPRM_CONTAINER_IMAGE (pyxis: the tasks run in this image, e.g. the Dockerfile's;
# the checkout is mounted at its own path) and ERPRM_CONTAINER_MOUNTS (more mounts, comma-separated
# SRC:DST), ERPRM_PYTHON (interpreter; default: the image's python3 in a container, else
# .venv/bin/python if present, else python), ERPRM_LOG_ROOT (default logs/slurm),
# ERPRM_SRUN_ARGS (extra srun flags), MASTER_PORT (override), ERPRM_NO_REQUEUE=1.
#SBATCH --job-name=erprm-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/slurm/%x-%j.out

set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: sbatch slurm/train_erprm.sh CONFIG.yaml [key=value ...]" >&2
  exit 2
fi
CONFIG=$1
shift

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
JOB_ID=${SLURM_JOB_ID:?this script runs under Slurm (sbatch); outside it use python -m nemo_erprm.train}
LOG_DIR=${ERPRM_LOG_ROOT:-logs/slurm}/${SLURM_JOB_NAME:-erprm-train}-$JOB_ID
mkdir -p "$LOG_DIR"

# The interpreter: inside a container the image's own python3 (the checkout's .venv, mounted
# with $PWD, is the CPU environment: no CUDA torch, no Transformer Engine)
if [ -n "${ERPRM_PYTHON:-}" ]; then
  PY=$ERPRM_PYTHON
elif [ -n "${ERPRM_CONTAINER_IMAGE:-}" ]; then
  PY=python3
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python
fi

MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT
# NCCL / CUDA settings megatron expects on H100 nodes (ignored on the CPU backend)
export CUDA_DEVICE_MAX_CONNECTIONS=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export PYTHONUNBUFFERED=1

SRUN=(srun --kill-on-bad-exit=1 --output="$LOG_DIR/rank-%t.log")
if [ -n "${ERPRM_CONTAINER_IMAGE:-}" ]; then
  # pyxis bind-mounts only what --container-mounts lists: the checkout (configs, data,
  # outputs, checkpoints) must be one of them, at the same path
  SRUN+=(--container-image="$ERPRM_CONTAINER_IMAGE"
         --container-mounts="$PWD:$PWD${ERPRM_CONTAINER_MOUNTS:+,$ERPRM_CONTAINER_MOUNTS}"
         --container-workdir="$PWD")
fi
if [ -n "${ERPRM_SRUN_ARGS:-}" ]; then
  read -r -a EXTRA <<< "$ERPRM_SRUN_ARGS"
  SRUN+=("${EXTRA[@]}")
fi
CMD=("$PY" -m nemo_erprm.train --config "$CONFIG" "$@")

echo "[$(date -Is)] job $JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}:" \
     "${SLURM_NNODES:-1} node(s) x ${SLURM_NTASKS_PER_NODE:-?} tasks, master $MASTER_ADDR:$MASTER_PORT"
echo "[$(date -Is)] ${SRUN[*]} ${CMD[*]}"

PREEMPTED=0
# shellcheck disable=SC2329  # called by the USR1 trap
on_usr1() {
  PREEMPTED=1
  echo "[$(date -Is)] USR1: time limit near; asking the tasks to checkpoint and stop"
  kill -USR1 "$STEP_PID" 2>/dev/null || true
}
trap on_usr1 USR1

"${SRUN[@]}" "${CMD[@]}" &
STEP_PID=$!
STATUS=0
# `wait` returns early when a trapped signal arrives: keep waiting for the step itself
while true; do
  wait "$STEP_PID" && STATUS=0 || STATUS=$?
  if ! kill -0 "$STEP_PID" 2>/dev/null; then
    break
  fi
done

if [ "$PREEMPTED" = 1 ] && [ "$STATUS" = 0 ] && [ -z "${ERPRM_NO_REQUEUE:-}" ]; then
  echo "[$(date -Is)] checkpoint written; requeueing job $JOB_ID"
  scontrol requeue "$JOB_ID"
  exit 0
fi
echo "[$(date -Is)] training step exited with status $STATUS"
exit "$STATUS"
