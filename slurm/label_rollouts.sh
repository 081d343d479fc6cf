#!/bin/bash
# Label rollouts as a Slurm job array: array task i labels shard i of n.
#
#   sbatch --array=0-31 slurm/label_rollouts.sh conf/label_gsm8k_mistral.yaml [key=value ...]
#   # vLLM runs in the vLLM image (vLLM's official image + our light dependencies, the
#   # Dockerfile's label-vllm target; vLLM brings its own torch, so it is not the NeMo image):
#   #   docker build --target label-vllm -t nemo-erprm:label-vllm .
#   #   enroot import -o nemo-erprm-label-vllm.sqsh dockerd://nemo-erprm:label-vllm
#   ERPRM_LABEL_IMAGE=$PWD/nemo-erprm-label-vllm.sqsh ERPRM_CONTAINER_MOUNTS=/models:/models \
#     sbatch --array=0-31 slurm/label_rollouts.sh conf/label_gsm8k_mistral.yaml
#   # resubmit failed tasks (the shard count must then be given: the array no longer shows it)
#   ERPRM_NUM_SHARDS=32 sbatch --array=5,17 slurm/label_rollouts.sh conf/label_gsm8k_mistral.yaml
#   # when all tasks are done (merge refuses while any shard is unfinished):
#   python tools/label_rollouts.py merge --dir outputs/labels/gsm8k_mistral
#
# Shard = SLURM_ARRAY_TASK_ID. Shard count = ERPRM_NUM_SHARDS, else the array size when the
# array is exactly 0..n-1; a folder refuses tasks of another count. Sharding is deterministic
# (problem i -> shard i mod n, per-completion seeds), so the merged output equals a
# single-process run (vLLM: with backend.batch_invariant=true). A requeued or resubmitted task
# resumes its shard: finished problems are skipped, a partial last line is cut.
#
# Resources: one GPU per task (backend.tensor_parallel_size=N: --gpus-per-node=N), 8 CPUs (vLLM
# runs an engine-core and a worker process besides the grader). CPU clusters (backend hf):
# --gpus-per-node=0 on the sbatch line. Time limit: Slurm sends USR1 120 s before it; the task
# is requeued and resumes (each finished problem is already on disk).
#
# Environment: ERPRM_LABEL_IMAGE, else ERPRM_CONTAINER_IMAGE: run each task inside this
# pyxis/enroot image (the checkout is mounted at its own path; ERPRM_CONTAINER_MOUNTS adds
# comma-separated SRC:DST mounts); ERPRM_PYTHON (interpreter; default: the image's python3 in
# a container, else .venv/bin/python if present, else python); ERPRM_NUM_SHARDS to override
# the shard count taken from the array size.
#SBATCH --job-name=erprm-label
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@120
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

# The task id is the shard, whatever subset of tasks this submission holds (--array=5,17)
SHARD=${SLURM_ARRAY_TASK_ID:-0}
if [ -n "${ERPRM_NUM_SHARDS:-}" ]; then
  NUM_SHARDS=$ERPRM_NUM_SHARDS
elif [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  NUM_SHARDS=1
elif [ "${SLURM_ARRAY_TASK_MIN:-0}" = 0 ] &&
     [ "${SLURM_ARRAY_TASK_MAX:-$((${SLURM_ARRAY_TASK_COUNT:-1} - 1))}" = $((${SLURM_ARRAY_TASK_COUNT:-1} - 1)) ]; then
  NUM_SHARDS=${SLURM_ARRAY_TASK_COUNT:-1}  # a full --array=0-(n-1)
else
  echo "error: array ${SLURM_ARRAY_TASK_MIN:-?}-${SLURM_ARRAY_TASK_MAX:-?} (${SLURM_ARRAY_TASK_COUNT:-?} tasks) is" \
       "not 0..n-1: give the job's shard count, e.g. ERPRM_NUM_SHARDS=32 sbatch --array=5,17 ..." >&2
  exit 2
fi
if [ "$SHARD" -ge "$NUM_SHARDS" ]; then
  echo "error: array task $SHARD but ERPRM_NUM_SHARDS=$NUM_SHARDS (tasks are shards 0..$((NUM_SHARDS - 1)))" >&2
  exit 2
fi

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
echo "[$(date -Is)] job ${SLURM_JOB_ID:-local} (restart ${SLURM_RESTART_COUNT:-0}): shard $SHARD of $NUM_SHARDS on $(hostname)"

if [ -z "${SLURM_JOB_ID:-}" ]; then
  exec "${CMD[@]}"  # run outside Slurm (a local test of the script)
fi
SRUN=(srun)
if [ -n "$IMAGE" ]; then
  # pyxis bind-mounts only what --container-mounts lists: the checkout is one of them
  SRUN+=(--container-image="$IMAGE"
         --container-mounts="$PWD:$PWD${ERPRM_CONTAINER_MOUNTS:+,$ERPRM_CONTAINER_MOUNTS}"
         --container-workdir="$PWD")
fi

# USR1 (--signal=B:USR1@120, the time limit is near): requeue this task (SLURM_JOB_ID is the
# array task's own job id); Slurm stops the step, and the requeued task resumes the shard
REQUEUED=0
# shellcheck disable=SC2329  # called by the USR1 trap
on_usr1() {
  REQUEUED=1
  echo "[$(date -Is)] USR1: time limit near; requeueing job $SLURM_JOB_ID (the shard resumes)"
  scontrol requeue "$SLURM_JOB_ID"
}
trap on_usr1 USR1

"${SRUN[@]}" "${CMD[@]}" &
STEP_PID=$!
STATUS=0
while true; do  # `wait` returns early when a trapped signal arrives
  wait "$STEP_PID" && STATUS=0 || STATUS=$?
  if ! kill -0 "$STEP_PID" 2>/dev/null; then
    break
  fi
done
if [ "$REQUEUED" = 1 ]; then
  exit 0
fi
exit "$STATUS"
