#!/bin/bash
# A single-node Slurm cluster on this machine, for tests and local trials (root, loopback).
#
#   slurm/local_cluster.sh up      # install (apt: slurm-wlm, munge) if missing, configure, start
#   slurm/local_cluster.sh status
#   slurm/local_cluster.sh down
#   export SLURM_CONF=$(slurm/local_cluster.sh conf)   # then sbatch / squeue / scontrol as usual
#
# One node (this host, 127.0.0.1) with all its CPUs, partition `debug`, backfill scheduler,
# requeue allowed, no GPUs. State, logs and the generated slurm.conf live in
# ${ERPRM_SLURM_DIR:-/tmp/erprm-slurm}. Jobs written for GPU nodes run here when the GPU and
# size flags are overridden on the sbatch line (see README, "Slurm on a CPU machine").

set -euo pipefail

DIR=${ERPRM_SLURM_DIR:-/tmp/erprm-slurm}
CONF=$DIR/slurm.conf

install_if_missing() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "slurm-wlm and munge are not installed, and installing needs root" >&2
    return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$DIR/apt.log" 2>&1 || {
    apt-get update -q >>"$DIR/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >>"$DIR/apt.log" 2>&1
  } || { echo "apt-get install slurm-wlm munge failed; see $DIR/apt.log" >&2; return 1; }
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
  mkdir -p "$DIR/state" "$DIR/spool"
  cat >"$CONF" <<EOF
ClusterName=erprm-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
SlurmctldPort=${ERPRM_SLURMCTLD_PORT:-6817}
SlurmdPort=${ERPRM_SLURMD_PORT:-6818}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
  mkdir -p "$DIR"
  install_if_missing
  write_conf
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
  fi
  down_daemons
  /usr/sbin/slurmctld -f "$CONF"
  /usr/sbin/slurmd -f "$CONF"
  export SLURM_CONF=$CONF
  for _ in $(seq 1 60); do
    if sinfo -h -o "%t" 2>/dev/null | grep -qE "idle|mix|alloc"; then
      echo "local Slurm up: export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 1
  done
  echo "Slurm did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
  return 1
}

down_daemons() {
  for pid_file in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    if [ -f "$pid_file" ]; then
      kill "$(cat "$pid_file")" 2>/dev/null || true
      rm -f "$pid_file"
    fi
  done
  sleep 1
}

case "${1:-}" in
  up) up ;;
  down) down_daemons; echo "local Slurm stopped" ;;
  status) SLURM_CONF=$CONF sinfo && SLURM_CONF=$CONF squeue ;;
  conf) echo "$CONF" ;;
  *) echo "usage: $0 up|down|status|conf" >&2; exit 2 ;;
esac
