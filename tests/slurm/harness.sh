#!/usr/bin/env bash
# A real single-node SLURM for the tests: `harness.sh install` installs Debian's slurm-wlm and
# munge; `harness.sh start` installs them if needed, configures and starts munged, slurmctld and
# slurmd as root with a fake GPU gres; `harness.sh stop` stops them by their pids. Every SLURM
# call is time-bounded.
set -euo pipefail
RUN=/tmp/tractmap-slurm
T="timeout -s KILL 20"

# the packages, once; under a lock, so that tests/run.sh can install them in the background while
# the first tests run, and `start` waits for that install instead of racing it for apt's lock
install() {
    exec 9>/tmp/tractmap-slurm-install.lock
    flock 9
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        timeout -s KILL 300 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout -s KILL 300 apt-get install -y -qq slurm-wlm munge >/dev/null
    fi
    flock -u 9
}

start() {
    install
    mkdir -p "$RUN"/{spool/ctld,spool/d,log} /etc/slurm /etc/munge /run/munge /var/lib/munge /var/log/munge
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
    cat > /etc/slurm/slurm.conf <<CONF
ClusterName=tractmap
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
MinJobAge=3600
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
StateSaveLocation=$RUN/spool/ctld
SlurmdSpoolDir=$RUN/spool/d
SlurmctldLogFile=$RUN/log/slurmctld.log
SlurmdLogFile=$RUN/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    echo "Name=gpu File=/dev/null" > /etc/slurm/gres.conf
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chmod 400 /etc/munge/munge.key
    chown -R root:root /etc/munge /run/munge /var/lib/munge /var/log/munge
    munged --force --pid-file="$RUN/munged.pid" --socket=/run/munge/munge.socket.2 2>/dev/null || munged --force
    slurmctld
    slurmd
    for _ in $(seq 60); do
        if $T sinfo -h -o %t 2>/dev/null | grep -q idle; then
            $T sinfo
            return 0
        fi
        sleep 1
    done
    echo "SLURM did not come up:" >&2
    tail -n 20 "$RUN"/log/*.log >&2
    return 1
}

stop() {
    for d in slurmd slurmctld munged; do
        pids=$(cat "$RUN/$d.pid" 2>/dev/null; pgrep -x "$d" || true)
        [ -n "$pids" ] && kill $pids 2>/dev/null || true
    done
    for _ in $(seq 20); do  # wait for them to exit, then make sure
        pgrep -x 'slurmd|slurmctld|munged' >/dev/null || break
        sleep 0.5
    done
    pkill -9 -x 'slurmd|slurmctld|munged' 2>/dev/null || true
    rm -rf "$RUN"
}

"$@"
