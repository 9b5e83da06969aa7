#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian's slurmctld, slurmd and munge; needs root), so that the
# test of `tme batch --slurm` submits real jobs. Idempotent: re-running restarts the daemons. Prints "ready" and
# exits 0 once `sinfo` shows the node idle; exits 1 when SLURM cannot be set up here.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then echo "slurm_localhost: needs root" >&2; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge \
    >/dev/null
fi
node=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=tmelocal
SlurmctldHost=${node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${node} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP
CONF
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
  [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged" || /usr/sbin/munged --force
sleep 1
slurmctld -c
slurmd
for _ in $(seq 1 30); do
  if sinfo -h -o "%T" 2>/dev/null | grep -qx idle; then echo ready; exit 0; fi
  sleep 1
done
echo "slurm_localhost: the node did not come up; see /var/log/slurm/" >&2
exit 1
