#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine (slurmctld and slurmd on localhost), for the SLURM tests.
#
#   tests/slurm/start_cluster.sh [--install]
#
# Idempotent: a cluster already answering with this configuration is left alone. slurm-wlm and munge are
# installed with apt-get when missing, but only as root and only in CI (CI is set) or with --install.
# Prints `export SLURM_CONF=...` last; the configuration, state and logs live in $TRAINER_TUNE_SLURM_DIR
# (default /tmp/trainer_tune_slurm). Exit 0: the node is idle and takes jobs; anything else: it is not, and
# the message says why (the tests skip with it).
set -euo pipefail

install=0
if [[ "${1:-}" == "--install" ]]; then
    install=1
fi
dir="${TRAINER_TUNE_SLURM_DIR:-/tmp/trainer_tune_slurm}"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

say() { echo "start_cluster: $*" >&2; }

node_idle() {
    [[ -f "$conf" ]] && timeout 10 sinfo --noheader --format=%T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'
}

if command -v sinfo >/dev/null && node_idle; then
    say "already running ($conf)"
    echo "export SLURM_CONF=$conf"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [[ "$(id -u)" != 0 ]]; then
        say "slurm-wlm or munge is not installed, and installing needs root"
        exit 1
    fi
    if [[ "$install" != 1 && -z "${CI:-}" ]]; then
        say "slurm-wlm or munge is not installed; run with --install (or in CI) to apt-get install them"
        exit 1
    fi
    if ! command -v apt-get >/dev/null; then
        say "slurm-wlm or munge is not installed and there is no apt-get here"
        exit 1
    fi
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq slurm-wlm munge; } >"${TMPDIR:-/tmp}/trainer_tune_slurm_apt.log" 2>&1; then
        say "apt-get could not install slurm-wlm and munge (see ${TMPDIR:-/tmp}/trainer_tune_slurm_apt.log)"
        exit 1
    fi
fi

if [[ "$(id -u)" != 0 ]]; then
    say "starting slurmd and munged needs root here (SlurmUser=root, the munge user)"
    exit 1
fi

host="$(hostname)"
mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/run"
cat >"$conf" <<CONF
# A one-node cluster for trainer_tune's tests (written by tests/slurm/start_cluster.sh).
ClusterName=trainer_tune
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

# munge: a key, then the daemon as the munge user.
if [[ ! -f /etc/munge/munge.key ]]; then
    mungekey -c >/dev/null 2>&1 || mungekey --create
    chown munge:munge /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! pgrep -u munge -x munged >/dev/null; then
    if command -v runuser >/dev/null; then
        runuser -u munge -- munged
    else
        su -s /bin/sh munge -c munged
    fi
fi

# A stale daemon from an earlier configuration would keep its old view: start ours only if none runs.
pgrep -x slurmctld >/dev/null || slurmctld -c
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 60); do
    if node_idle; then
        say "node $host is up ($conf)"
        echo "export SLURM_CONF=$conf"
        exit 0
    fi
    sleep 0.5
done
say "the node did not become idle within 30 s; see $dir/log/slurmctld.log and $dir/log/slurmd.log"
sinfo >&2 || true
exit 1
