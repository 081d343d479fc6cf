"""slurm/train_erprm.sh as a 2-node x 1-task job on this machine: `sbatch --nodes=2` (the
README's scale-out line) gives SLURM_NNODES=2 and SLURM_NTASKS=2, and srun starts one task per
node with its own SLURM_PROCID/SLURM_NODEID/SLURM_LOCALID. A stand-in srun starts both tasks
here with exactly those variables (the local Slurm cluster has one node). Lightning's SLURM
environment checks SLURM_NNODES against the trainer's num_nodes and SLURM_NTASKS_PER_NODE
against its devices (`lightning/fabric/plugins/environments/slurm.py`), then the two ranks
train data-parallel over gloo: the losses must be the 1-node TP=1 run's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.training.conftest import metrics, overrides
from tests.training.test_slurm_script import fake_slurm_env

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# srun for a job of SLURM_NNODES nodes x SLURM_NTASKS_PER_NODE tasks: every task gets the
# variables Slurm gives it; --output=...%t... becomes one log per task, as srun writes them
MULTI_NODE_SRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE_SLURM_LOG/srun.args"
output=""
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do
  case "$1" in --output=*) output=${1#--output=} ;; esac
  shift
done
pids=()
per_node=$SLURM_NTASKS_PER_NODE
for ((t = 0; t < SLURM_NTASKS; t++)); do
  log=${output//%t/$t}
  SLURM_PROCID=$t SLURM_NODEID=$((t / per_node)) SLURM_LOCALID=$((t % per_node)) SLURMD_NODENAME=node$((t / per_node)) \\
    "$@" > "${log:-/dev/stdout}" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


def test_two_nodes_one_task_each_match_the_one_node_run(setup, reference, tmp_path):
    out = tmp_path / "run"
    env = fake_slurm_env(tmp_path, srun=MULTI_NODE_SRUN)
    env.update(SLURM_NNODES="2", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1",
               SLURM_JOB_NODELIST="node[0-1]", SLURM_NODELIST="node[0-1]")
    for rank_var in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"):  # per task, set by srun
        env.pop(rank_var)
    # as `sbatch --nodes=2 --ntasks-per-node=1 slurm/train_erprm.sh conf/tiny_cpu.yaml ...`
    proc = subprocess.run(["bash", str(REPO / "slurm" / "train_erprm.sh"), "conf/tiny_cpu.yaml",
                           *overrides(setup, out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    logs = sorted((tmp_path / "slurm_logs").glob("*/rank-*.log"))
    tails = "".join(f"\n--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-25:]) for p in logs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + tails
    assert [p.name for p in logs] == ["rank-0.log", "rank-1.log"]
    assert "2 node(s) x 1 tasks" in proc.stdout

    ref_train, ref_val = metrics(reference)
    train, val = metrics(out)
    assert sorted(train) == sorted(ref_train)
    assert max(abs(train[s] - ref_train[s]) for s in train) < 1e-5, (train, ref_train)
    assert max(abs(val[s] - ref_val[s]) for s in val) < 1e-5
