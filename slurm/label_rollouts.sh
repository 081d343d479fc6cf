#!/bin/bash
# Label rollouts as a Slurm job array: array task i labels shard i of n (n = array size).
#
#   sbatch --array=0-31 slurm/label_rollouts.sh conf/label_gsm8k_mistral.yaml [key=value ...]
#   # GPU clusters (vLLM backend): add --gpus-per-task=1 (or --gres=gpu:1) to the sbatch line
#   # and run in the vLLM image (vLLM's official image + our light dependencies, the
#   # Dockerfile's label-vllm target; vLLM brings its own torch, so it is not the NeMo image):
#   #   docker build --target label-vllm -t nemo-erprm:label-vllm .
#   #   enroot import -o nemo-erprm-label-vllm.sqsh dockerd://nemo-erprm:label-vllm
#   ERPRM_LABEL_IMAGE=$PWD/nemo-erprm-label-vllm.sqsh ERPRM_CONTAINER_MOUNTS=/models:/models \
#     sbatch --array=0-31 --gpus-per-task=1 slurm/label_rollouts.sh conf/label_gsm8k_mistral.yaml
#   # when all tasks are done:
#   python tools/label_rollouts.py merge --dir outputs/labels/gsm8k_mistral
#
# Sharding is deterministic (problem i -> shard i mod n, per-problem seeds), so the merged
# output equals a single-process run. A requeued or resubmitted task resumes its shard:
# finished problems are skipped, a partial last line is cut.
#
# Environment: ERPRM_LABEL_IMAGE, else ERPRM_CONTAINER_IMAGE: run each task inside this
# pyxis/enroot image (the checkout is mounted at its own path; ERPRM_CONTAINER_MOUNTS adds
# comma-separated SRC:DST mounts); ERPRM_PYTHON (interpreter; default: the image's python3 in
# a container, else .venv/bin/python if present, else python); ERPRM_NUM_SHARDS to override
# the shard count taken from the array size.
#SBATCH --job-name=erprm-label
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out

set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: sbatch --array=0-N slurm/label_rollouts.sh CONFIG.yaml [key=value ...]" >&2
  exit 2
fi
CONFIG=$1
shift

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs

TASK_ID=${SLURM_ARRAY_TASK_ID:-0}
TASK_MIN=${SLURM_ARRAY_TASK_MIN:-0}
SHARD=$((TASK_ID - TASK_MIN))
NUM_SHARDS=${ERPRM_NUM_SHARDS:-${SLURM_ARRAY_TASK_COUNT:-1}}

# A container only under Slurm (srun starts it); there the image's own python3: the
# checkout's .venv, mounted with $PWD, is the CPU environment
IMAGE=""
if [ -n "${SLURM_JOB_ID:-}" ]; then
  IMAGE=${ERPRM_LABEL_IMAGE:-${ERPRM_CONTAINER_IMAGE:-}}
fi
if [ -n "${ERPRM_PYTHON:-}" ]; then
  PY=$ERPRM_PYTHON
elif [ -n "$IMAGE" ]; then
  PY=python3
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python
fi

CMD=("$PY" tools/label_rollouts.py --config "$CONFIG" --shard "$SHARD" --num-shards "$NUM_SHARDS" --no-progress "$@")
echo "[$(date -Is)] job ${SLURM_JOB_ID:-local} array task $TASK_ID: shard $SHARD of $NUM_SHARDS on $(hostname)"

if [ -z "${SLURM_JOB_ID:-}" ]; then
  exec "${CMD[@]}"  # run outside Slurm (a local test of the script)
elif [ -n "$IMAGE" ]; then
  # pyxis bind-mounts only what --container-mounts lists: the checkout is one of them
  srun --container-image="$IMAGE" \
       --container-mounts="$PWD:$PWD${ERPRM_CONTAINER_MOUNTS:+,$ERPRM_CONTAINER_MOUNTS}" \
       --container-workdir="$PWD" "${CMD[@]}"
else
  srun "${CMD[@]}"
fi
