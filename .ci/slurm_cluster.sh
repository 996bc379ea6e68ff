#!/usr/bin/env bash
# Start / stop a real single-node SLURM cluster on this machine, for tests and demos.
#
#   .ci/slurm_cluster.sh start   [STATE_DIR]   # idempotent
#   .ci/slurm_cluster.sh status  [STATE_DIR]
#   .ci/slurm_cluster.sh stop    [STATE_DIR]
#
# Needs the Debian packages `slurmctld slurmd slurm-client munge` (installs nothing itself)
# and root (slurmd launches jobs as their owner). STATE_DIR defaults to $BIOFLOW_SLURM_DIR or
# /tmp/bioflow-slurm; it holds the spool/state dirs and the logs
# (STATE_DIR/log/{slurmctld,slurmd}.log, munged's in /var/log/munge/munged.log).
# The config goes to /etc/slurm/slurm.conf + gres.conf, where every SLURM client looks: a
# SLURM_CONF variable would not do, the executor plugin's job step drops SLURM_* variables
# before its nested srun. An /etc/slurm/slurm.conf not written by this script is never touched.
#
# The node:
#  - partitions `cpu` (default) and `gpu`, the names profiles/slurm/config.yaml uses;
#  - a fake GPU gres (File=/dev/null) so `sbatch -p gpu --gpus=1` is scheduled and gets
#    CUDA_VISIBLE_DEVICES=0 like on a real GPU node; the job itself falls back to the CPU;
#  - it advertises at least 16 CPUs and 64 GiB (SlurmdParameters=config_overrides) so the
#    project's profile is submitted unmodified; jobs share the real cores;
#  - MinJobAge=3600 and no slurmdbd: use `--slurm-status-command squeue`;
#  - proctrack/pgid: scancel kills every process of a job step's process group, also one whose
#    parent already exited (linuxproc follows parent links only; a job's Snakemake that hung in
#    its SIGTERM handler outlived scancel that way, as it would not under a cluster's cgroups).
set -euo pipefail

cmd=${1:-start}
STATE=${2:-${BIOFLOW_SLURM_DIR:-/tmp/bioflow-slurm}}
CONF=/etc/slurm/slurm.conf
MARK='# written by .ci/slurm_cluster.sh'
LOG=$STATE/log
HOST=$(hostname -s)
MIN_CPUS=16
MIN_MEM_MB=65536
N_GPUS=2

die() { echo "slurm_cluster: $*" >&2; exit 1; }

need_binaries() {
    local b missing=()
    for b in munged munge slurmctld slurmd sbatch squeue scontrol sinfo srun; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}; install: apt-get install -y slurmctld slurmd slurm-client munge"
    [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd starts jobs as their owner)"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then return; fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key missing (the munge package creates it; or run mungekey -c)"
    # munged refuses to run as root; it runs as the munge user like the packaged service.
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge_ok && return; sleep 0.1; done
    die "munged did not start; see /var/log/munge/munged.log"
}

write_conf() {
    local cpus mem
    cpus=$(nproc); [ "$cpus" -ge $MIN_CPUS ] || cpus=$MIN_CPUS
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
    [ "$mem" -ge $MIN_MEM_MB ] || mem=$MIN_MEM_MB
    mkdir -p "$STATE/state" "$STATE/spool" "$LOG" /etc/slurm
    cat > "$CONF.tmp" <<EOF
$MARK
ClusterName=bioflow
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=5
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$N_GPUS State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    # One fake device file per GPU: slurmd then exports CUDA_VISIBLE_DEVICES as on a GPU node.
    cat > /etc/slurm/gres.conf <<EOF
$MARK
NodeName=$HOST Name=gpu Count=$N_GPUS File=/dev/null,/dev/zero
EOF
}

node_state() { sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -1; }

start() {
    need_binaries
    if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; not touching a real cluster's config"
    fi
    start_munge
    if pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" && scontrol ping >/dev/null 2>&1; then
        echo "slurm_cluster: already running"
    else
        stop_daemons
        write_conf
        # A fresh cluster every start: an earlier run's saved jobs (a machine image taken while
        # tests ran leaves some "running") would be recovered and hold the node until slurmctld
        # notices, after many minutes, that they are gone. -c clears slurmctld's saved state.
        rm -rf "$STATE/state" "$STATE/spool"
        mkdir -p "$STATE/state" "$STATE/spool"
        /usr/sbin/slurmctld -f "$CONF" -c
        /usr/sbin/slurmd -f "$CONF"
    fi
    local st=""
    for _ in $(seq 100); do
        st=$(node_state)
        case "$st" in idle|mix|alloc) break ;; esac
        sleep 0.2
    done
    case "$st" in
        idle|mix|alloc) ;;
        drain*|down*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        *) die "node not ready (state '$st'); see $LOG/slurmctld.log and $LOG/slurmd.log" ;;
    esac
    echo "slurm_cluster: up; node $HOST ($(node_state)), partitions: $(sinfo -h -o '%P' | tr '\n' ' ')"
    echo "slurm_cluster: logs in $LOG (slurmctld.log, slurmd.log), munged in /var/log/munge"
}

stop_daemons() {
    local f
    for f in slurmd slurmctld; do
        if pid_alive "$STATE/$f.pid"; then
            kill "$(cat "$STATE/$f.pid")" 2>/dev/null || true
            for _ in $(seq 50); do pid_alive "$STATE/$f.pid" || break; sleep 0.1; done
        fi
        rm -f "$STATE/$f.pid"
    done
}

case "$cmd" in
    start) start ;;
    stop)
        stop_daemons
        # Remove the config we wrote: with it, every SLURM client (and the Snakemake SLURM
        # plugin, which runs `scontrol show config` when imported) waits ~10 s for a controller
        # that is gone, on every `snakemake` call. Without it they fail at once.
        for f in "$CONF" /etc/slurm/gres.conf; do
            if [ -e "$f" ] && grep -qxF "$MARK" "$f"; then rm -f "$f"; fi
        done
        echo "slurm_cluster: stopped, its config removed (munged left running; logs kept in $LOG)" ;;
    status)
        if pid_alive "$STATE/slurmctld.pid" && scontrol ping >/dev/null 2>&1; then
            echo "slurm_cluster: running; node state $(node_state); logs in $LOG"
        else
            echo "slurm_cluster: not running"; exit 1
        fi ;;
    *) die "usage: $0 start|stop|status [STATE_DIR]" ;;
esac
