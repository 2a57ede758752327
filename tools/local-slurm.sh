#!/usr/bin/env bash
# A real one-node Slurm cluster (munge + slurmctld + slurmd) on this machine, for trying
# the cluster path and for CI.  Debian/Ubuntu, as root, no systemd needed.
#
#   bash tools/local-slurm.sh start    # install if needed, configure, start, wait for 'idle'
#   bash tools/local-slurm.sh stop     # cancel jobs, stop only the daemons this script started
#   bash tools/local-slurm.sh status
#
# The cluster: node "localhost" (CPUs = nproc, or $LOCAL_SLURM_CPUS), partition "debug".
set -euo pipefail

STATE=${LOCAL_SLURM_STATE:-/run/parsl-flows-slurm}
LOGDIR=/var/log/slurm
say() { echo "[local-slurm] $*" >&2; }

# is_ours NAME: the pid we recorded for NAME is alive and really is that daemon
is_ours() {
  local pid
  pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

stop_daemon() {
  local name=$1 pid
  if is_ours "$name"; then
    pid=$(cat "$STATE/$name.pid")
    say "stopping $name ($pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$name.pid"
}

start_daemon() {  # start_daemon NAME PIDFILE COMMAND...
  local name=$1 pidfile=$2; shift 2
  is_ours "$name" && return 0
  rm -f "$pidfile"
  "$@"
  for _ in $(seq 50); do [ -s "$pidfile" ] && break; sleep 0.1; done
  [ -s "$pidfile" ] || { say "$name did not start; see $LOGDIR"; exit 1; }
  cp "$pidfile" "$STATE/$name.pid"
  say "$name started ($(cat "$STATE/$name.pid"))"
}

case "${1:-start}" in
  stop)
    if is_ours slurmctld; then
      jobs=$(squeue -h -o %A 2>/dev/null || true)
      if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
      fi
    fi
    stop_daemon slurmd; stop_daemon slurmctld; stop_daemon munged
    # job steps and scripts of cancelled jobs must not outlive the cluster
    pkill -f slurmstepd 2>/dev/null || true
    exit 0 ;;
  status)
    for d in munged slurmctld slurmd; do
      if is_ours "$d"; then echo "$d: running ($(cat "$STATE/$d.pid"))"; else echo "$d: stopped"; fi
    done
    sinfo 2>/dev/null || true
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
mkdir -p "$STATE" "$LOGDIR" /etc/slurm /var/spool/slurmctld /var/spool/slurmd

# munge: a local key, its run directory, the daemon, a self-test
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! is_ours munged; then
  if [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
    say "reusing the munged that is already running"
  else
    rm -f /run/munge/munge.socket.2*
    start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged --force
  fi
fi
munge -n | unmunge >/dev/null || { say "munge self-test failed"; exit 1; }

cpus=${LOCAL_SLURM_CPUS:-$(nproc)}
overrides=""
[ "$cpus" -gt "$(nproc)" ] && overrides="SlurmdParameters=config_overrides"
mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.95)}')  # above what slurmd sees: node INVALID
cat > /etc/slurm/slurm.conf <<CONF
# written by parsl_flows tools/local-slurm.sh
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
MessageTimeout=10
KillWait=2
MinJobAge=60
InactiveLimit=0
Waittime=0
$overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

# -c -i: a fresh cluster state each time; -N localhost: our node name is not the hostname
start_daemon slurmctld /run/slurmctld.pid /usr/sbin/slurmctld -c -i
start_daemon slurmd /run/slurmd.pid /usr/sbin/slurmd -N localhost

for i in $(seq 60); do
  case "$(sinfo -h -N -n localhost -o %T 2>/dev/null || true)" in
    idle*|mixed*|allocated*) sinfo; exit 0 ;;
  esac
  [ "$i" = 20 ] && scontrol update nodename=localhost state=resume 2>/dev/null || true
  sleep 0.5
done
say "the node never became usable:"
tail -n 20 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" >&2 || true
exit 1
