#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and CI (needs root and apt-get).
#
#   launch/slurm/local_cluster.sh start    install slurm-wlm + munge if missing, write slurm.conf,
#                                          start munged, slurmctld, slurmd; wait until the node
#                                          is idle (idempotent: an already running cluster is kept)
#   launch/slurm/local_cluster.sh stop     stop the daemons this script started
#   launch/slurm/local_cluster.sh status   sinfo
#
# One node named `hostname -s` at 127.0.0.1 with every CPU it has, partition `debug` (default).
# Exit 3 with one line when it cannot (no root, no apt-get): the tests skip with that line.
set -euo pipefail
cmd="${1:-start}"
state="${LLMJAX_SLURM_STATE:-/var/lib/llmjax-slurm}"
conf_dir=/etc/slurm
conf="$conf_dir/slurm.conf"
node="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"

say() { echo "local_cluster: $*" >&2; }
fail() { echo "local_cluster: $*" >&2; exit 3; }

# A daemon this script started is running: its pid file names a live process of that name.
running() {
  local pid
  pid="$(cat "$state/$1.pid" 2>/dev/null || true)"
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
stop_daemon() {
  local pid
  if running "$1"; then
    pid="$(cat "$state/$1.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
  fi
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    return
  fi
  [ "$(id -u)" = 0 ] || fail "slurm-wlm is not installed and this is not root (cannot apt-get)"
  command -v apt-get >/dev/null || fail "slurm-wlm is not installed and there is no apt-get"
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || fail "apt-get update failed"
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null \
      || fail "apt-get install slurm-wlm munge failed"
  fi
}

write_conf() {
  mkdir -p "$conf_dir" "$state/ctld" "$state/d" "$state/log"
  cat > "$conf.new" <<CONF
# Written by launch/slurm/local_cluster.sh: a one-node cluster for tests.
ClusterName=llmjax
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (default 120 s)
AuthInfo=cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
SlurmctldParameters=enable_configless
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  if ! cmp -s "$conf.new" "$conf" 2>/dev/null; then
    mv "$conf.new" "$conf"
    return 0  # changed
  fi
  rm -f "$conf.new"
  return 1
}

start() {
  [ "$(id -u)" = 0 ] || { command -v sinfo >/dev/null && sinfo -h >/dev/null 2>&1 && exit 0; \
    fail "not root: cannot start slurmctld/slurmd here"; }
  install
  if [ -e "$conf" ] && ! grep -q "^# Written by launch/slurm/local_cluster.sh" "$conf"; then
    # A slurm.conf this script did not write: a real cluster's. Use it if it answers, never
    # overwrite it.
    sinfo -h >/dev/null 2>&1 && { say "using the cluster of the existing $conf"; exit 0; }
    fail "$conf exists and was not written by this script; not replacing it"
  fi
  changed=0
  write_conf && changed=1
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid 2>/dev/null \
      || munged --force || fail "munged did not start"
  fi
  if [ "$changed" = 1 ]; then
    stop_daemon slurmd
    stop_daemon slurmctld
  fi
  running slurmctld || slurmctld || fail "slurmctld did not start (see $state/log/slurmctld.log)"
  running slurmd || slurmd || fail "slurmd did not start (see $state/log/slurmd.log)"
  for _ in $(seq 1 100); do
    st="$(sinfo -h -N -o %t -n "$node" 2>/dev/null || true)"
    case "$st" in
      idle*|mix*|alloc*) say "node $node is $st ($cpus CPUs, partition debug)"; exit 0 ;;
      down*|drain*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  fail "node $node did not become idle within 20 s (state: ${st:-none}; see $state/log)"
}

stop() {
  stop_daemon slurmd
  stop_daemon slurmctld
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
