#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for the tests and for trying `cleanbench run --executor slurm`.
# Run as root on Debian (bookworm: Slurm 22.05): installs munge, slurmctld, slurmd and the client commands if
# missing, writes a minimal slurm.conf (this machine's cores, one partition `debug`, requeue allowed), starts
# munged, slurmctld and slurmd as background daemons (no systemd needed) and waits until the node is idle.
# Stop them with benchmarks/slurm/stop.sh. Exit status: 0 up, 2 cannot install (not root, no apt-get),
# 1 the daemons did not come up (see /var/log/slurm/*.log).
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
PACKAGES="munge slurmctld slurmd slurm-client"

if [ "$(id -u)" != 0 ]; then
    echo "start.sh: must run as root (it installs packages and starts daemons)" >&2
    exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v scontrol >/dev/null; then
    if ! command -v apt-get >/dev/null; then
        echo "start.sh: Slurm is not installed and there is no apt-get to install it ($PACKAGES)" >&2
        exit 2
    fi
    echo "start.sh: installing $PACKAGES"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES >/dev/null; }; then
        echo "start.sh: apt-get could not install $PACKAGES" >&2
        exit 2
    fi
fi

# munge: the key (the package makes one; make it if missing) and its run dirs, then the daemon as user munge.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
if ! munge -n | unmunge >/dev/null; then
    echo "start.sh: munged did not start" >&2
    exit 1
fi

# slurm.conf: one node, `localhost`, with this machine's cores and (most of) its memory.
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/slurm
cat > "$CONF_DIR/slurm.conf" <<CONF
# Written by benchmarks/slurm/start.sh: a one-node test cluster on localhost.
ClusterName=cleanbench
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it starts again (default 120)
AuthInfo=cred_expire=30
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=localhost CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
# Slurm 22.05 with the cgroup plugins off still reads cgroup.conf if present; none is needed here.

if scontrol ping 2>/dev/null | grep -q "is UP"; then
    scontrol reconfigure  # already running: read the slurm.conf just written
else
    /usr/sbin/slurmctld
fi
if ! pgrep -x slurmd >/dev/null; then
    /usr/sbin/slurmd -N localhost
fi
for _ in $(seq 60); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$state" in
        idle|mixed|allocated) echo "start.sh: Slurm is up (node localhost: $state, $CPUS CPUs)"; exit 0 ;;
        down*|drain*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
done
echo "start.sh: the node did not come up (state: ${state:-none}); see $LOG_DIR/slurmctld.log and slurmd.log" >&2
exit 1
