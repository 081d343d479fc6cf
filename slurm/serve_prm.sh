#!/bin/bash
# Serve an ER-PRM as a reward model on one GPU of a Slurm node (NeMo-Aligner PPO, OpenRLHF, verl).
#
#   sbatch slurm/serve_prm.sh SCORER [serve_prm.py options ...]
#   sbatch slurm/serve_prm.sh outputs/train/RUN/hf --protocol aligner --actor-tokenizer /models/actor
#   sbatch slurm/serve_prm.sh outputs/train/RUN/hf --protocol http --port 8000 --token-file ~/.erprm_token
#
# The server binds 0.0.0.0 here (other nodes call it); protect the HTTP protocol with
# --token-file. The node name is printed at the top of the log: point the RL job at it.
# Environment: ERPRM_CONTAINER_IMAGE (pyxis: run in this image, the checkout mounted at its own
# path) / ERPRM_CONTAINER_MOUNTS (more comma-separated SRC:DST mounts), ERPRM_PYTHON (default:
# the image's python3 in a container, else .venv/bin/python if present, else python).
#SBATCH --job-name=erprm-serve
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=logs/slurm/%x-%j.out

set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: sbatch slurm/serve_prm.sh SCORER [serve_prm.py options ...]" >&2
  exit 2
fi
SCORER=$1
shift

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs/slurm
# A container only under Slurm (srun starts it); there the image's own python3: the
# checkout's .venv, mounted with $PWD, is the CPU environment
IMAGE=""
if [ -n "${SLURM_JOB_ID:-}" ]; then
  IMAGE=${ERPRM_CONTAINER_IMAGE:-}
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

echo "[$(date -Is)] reward model server on $(hostname) (job ${SLURM_JOB_ID:-local})"
CMD=("$PY" tools/serve_prm.py --scorer "$SCORER" --host 0.0.0.0 "$@")
if [ -z "${SLURM_JOB_ID:-}" ]; then
  exec "${CMD[@]}"
elif [ -n "$IMAGE" ]; then
  # pyxis bind-mounts only what --container-mounts lists: the checkout is one of them
  srun --container-image="$IMAGE" \
       --container-mounts="$PWD:$PWD${ERPRM_CONTAINER_MOUNTS:+,$ERPRM_CONTAINER_MOUNTS}" \
       --container-workdir="$PWD" "${CMD[@]}"
else
  srun "${CMD[@]}"
fi
