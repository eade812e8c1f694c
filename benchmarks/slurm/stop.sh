#!/usr/bin/env bash
# Stops what benchmarks/slurm/start.sh started: slurmd, slurmctld and munged (by their pid files). Jobs still
# running are killed with slurmd. State under /var/spool/slurm* is kept; pass --clean to remove it as well.
set -uo pipefail

stop() {  # stop NAME PIDFILE: SIGTERM the daemon, wait for it to go
    local pid
    pid=$(cat "$2" 2>/dev/null) || return 0
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    echo "stop.sh: $1 ($pid) did not stop on SIGTERM; killing it" >&2
    kill -9 "$pid" 2>/dev/null
}

stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
stop munged /run/munge/munged.pid
if [ "${1:-}" = "--clean" ]; then
    rm -rf /var/spool/slurmctld /var/spool/slurmd
fi
echo "stop.sh: stopped"
