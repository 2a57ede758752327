#!/usr/bin/env bash
# A real Slurm cluster (munge + slurmctld + one slurmd per node) on this machine, for trying
# the cluster path and for CI.  Debian/Ubuntu, as root, no systemd needed.
#
#   bash tools/local-slurm.sh start    # install if needed, configure, start, wait for 'idle'
#   bash tools/local-slurm.sh stop     # cancel jobs, stop what this script started, unmount
#   bash tools/local-slurm.sh status
#   bash tools/local-slurm.sh login NAME CMD...   # CMD as on another login node (see below)
#
# Settings (environment):
#   LOCAL_SLURM_CPUS=C      CPUs each node advertises (default: nproc)
#   LOCAL_SLURM_NODES=N     N nodes, "node1".."nodeN", each its own slurmd (default 1: one
#                           node named "localhost", as on a plain one-node install)
#   LOCAL_SLURM_SHARED=DIR  DIR becomes a shared filesystem, as a cluster's NFS or Lustre:
#                           one folder served by an sshd on 127.0.0.1 and mounted with sshfs,
#                           once at DIR for this machine (the "login node", the driver) and
#                           once more for each node, at the same path DIR, in the mount
#                           namespace of that node's slurmd and so of its jobs.  Each client
#                           keeps its own attribute and directory caches and pays a round trip
#                           for every metadata operation, as on a real cluster.
#
# `login NAME CMD...` runs CMD in a mount and host-name namespace of its own: host name NAME,
# and DIR through a client of its own (mounted on first use), as a second login node would.
#
# What was started is recorded in $LOCAL_SLURM_STATE (default /run/parsl-flows-slurm):
#   slurmd-NODE.pid, sshfs-NODE.pid (the node's client; SIGSTOP it to stall that node's
#   filesystem), sshfs-login.pid (this machine's client), shared.env (DIR and the nodes).
set -euo pipefail

STATE=${LOCAL_SLURM_STATE:-/run/parsl-flows-slurm}
LOGDIR=/var/log/slurm
SSH_PORT=${LOCAL_SLURM_SSH_PORT:-2223}
say() { echo "[local-slurm] $*" >&2; }

# is_ours NAME COMM: the pid we recorded for NAME is alive and really is that program
is_ours() {
  local pid
  pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${2:-$1}" ]
}

stop_daemon() {  # stop_daemon NAME [COMM]
  local name=$1 pid
  if is_ours "$name" "${2:-$1}"; then
    pid=$(cat "$STATE/$name.pid")
    say "stopping $name ($pid)"
    kill -CONT "$pid" 2>/dev/null || true  # a stalled client (SIGSTOP) must hear the TERM
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$name.pid"
}

start_daemon() {  # start_daemon NAME PIDFILE COMMAND...
  local name=$1 pidfile=$2; shift 2
  rm -f "$pidfile"
  "$@"
  for _ in $(seq 50); do [ -s "$pidfile" ] && break; sleep 0.1; done
  [ -s "$pidfile" ] || { say "$name did not start; see $LOGDIR"; exit 1; }
  cp "$pidfile" "$STATE/$name.pid"
  say "$name started ($(cat "$STATE/$name.pid"))"
}

node_names() {  # the nodes of the running (or about to run) cluster
  if [ -s "$STATE/nodes" ]; then cat "$STATE/nodes"; return; fi
  local n=${LOCAL_SLURM_NODES:-1}
  if [ "$n" -le 1 ]; then echo localhost; else seq -f 'node%g' 1 "$n"; fi
}

shared_dir() { cat "$STATE/shared" 2>/dev/null || true; }

# mount_client MOUNTPOINT PIDNAME: one more sshfs client of the shared folder
mount_client() {
  local at=$1 name=$2 before after pid
  mkdir -p "$at"
  mountpoint -q "$at" && return 0
  before=$(pgrep -x sshfs | sort || true)
  # cache_timeout: how long a client trusts its cached attributes and listings (sshfs's
  # default, 20 s; NFS's acdirmax is 60 s).
  sshfs -p "$SSH_PORT" \
    -o IdentityFile="$STATE/ssh/key",StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null \
    -o allow_other,cache_timeout="${LOCAL_SLURM_CACHE_SECONDS:-20}",ServerAliveInterval=5 \
    "root@127.0.0.1:$STATE/shared-backing" "$at"
  after=$(pgrep -x sshfs | sort || true)
  pid=$(comm -13 <(echo "$before") <(echo "$after") | head -n 1)
  [ -n "$pid" ] || { say "the sshfs client at $at did not start"; exit 1; }
  echo "$pid" > "$STATE/$name.pid"
}

unmount_all() {
  local m
  # the clients are FUSE mounts under $STATE/clients and the shared folder itself
  for name in $(ls "$STATE" 2>/dev/null | sed -n 's/^sshfs-\(.*\)\.pid$/\1/p'); do
    kill -CONT "$(cat "$STATE/sshfs-$name.pid")" 2>/dev/null || true
  done
  for m in $(awk '$3 == "fuse.sshfs" {print $2}' /proc/mounts | sort -r); do
    case "$m" in
      "$STATE"/*|"$(shared_dir)") fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true ;;
    esac
  done
  for name in $(ls "$STATE" 2>/dev/null | sed -n 's/^sshfs-\(.*\)\.pid$/\1/p'); do
    stop_daemon "sshfs-$name" sshfs
  done
  stop_daemon sshd
}

start_shared() {  # start_shared DIR: sshd on loopback, this machine's client at DIR
  local dir=$1
  if ! command -v sshfs >/dev/null || [ ! -x /usr/sbin/sshd ]; then
    say "installing sshfs openssh-server"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends sshfs openssh-server >/dev/null
  fi
  mkdir -p "$STATE/ssh" "$STATE/shared-backing" "$STATE/clients" /run/sshd "$dir"
  chmod 700 "$STATE/ssh"
  [ -f "$STATE/ssh/key" ] || ssh-keygen -q -t ed25519 -N '' -f "$STATE/ssh/key"
  [ -f "$STATE/ssh/host" ] || ssh-keygen -q -t ed25519 -N '' -f "$STATE/ssh/host"
  cp "$STATE/ssh/key.pub" "$STATE/ssh/authorized_keys"
  if ! is_ours sshd; then
    start_daemon sshd "$STATE/ssh/sshd.pid" /usr/sbin/sshd -p "$SSH_PORT" \
      -o ListenAddress=127.0.0.1 -h "$STATE/ssh/host" -o PidFile="$STATE/ssh/sshd.pid" \
      -o AuthorizedKeysFile="$STATE/ssh/authorized_keys" -o StrictModes=no \
      -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no -o MaxStartups=100
  fi
  grep -q '^user_allow_other' /etc/fuse.conf 2>/dev/null || echo user_allow_other >> /etc/fuse.conf
  mount_client "$dir" sshfs-login
  echo "$dir" > "$STATE/shared"
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
    for node in $(node_names); do stop_daemon "slurmd-$node" slurmd; done
    stop_daemon slurmd; stop_daemon slurmctld; stop_daemon munged
    # job steps and scripts of cancelled jobs must not outlive the cluster
    pkill -f slurmstepd 2>/dev/null || true
    for _ in $(seq 50); do pgrep -x slurmstepd >/dev/null || break; sleep 0.1; done
    pkill -9 -x slurmstepd 2>/dev/null || true
    unmount_all
    rm -f "$STATE/nodes" "$STATE/shared"
    exit 0 ;;
  status)
    for d in munged slurmctld sshd; do
      if is_ours "$d"; then echo "$d: running ($(cat "$STATE/$d.pid"))"; else echo "$d: stopped"; fi
    done
    for node in $(node_names); do
      if is_ours "slurmd-$node" slurmd; then echo "slurmd $node: running ($(cat "$STATE/slurmd-$node.pid"))"
      else echo "slurmd $node: stopped"; fi
    done
    [ -n "$(shared_dir)" ] && echo "shared filesystem: $(shared_dir)"
    sinfo 2>/dev/null || true
    exit 0 ;;
  login)
    shift
    name=${1:?usage: $0 login NAME CMD...}; shift
    dir=$(shared_dir)
    [ -n "$dir" ] || { say "no shared filesystem: start with LOCAL_SLURM_SHARED=DIR"; exit 2; }
    mount_client "$STATE/clients/login-$name" "sshfs-login-$name"
    exec unshare -m -u --propagation private sh -c \
      'hostname "$1" && mount --bind "$2" "$3" && shift 3 && exec "$@"' \
      sh "$name" "$STATE/clients/login-$name" "$dir" "$@" ;;
  start) ;;
  *) echo "usage: $0 start|stop|status|login NAME CMD..." >&2; exit 2 ;;
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

if is_ours slurmctld; then
  say "already running (stop it first to change its settings)"
  sinfo
  exit 0
fi

shared=${LOCAL_SLURM_SHARED:-}
if [ -n "$shared" ]; then
  mkdir -p "$shared"
  shared=$(cd "$shared" && pwd -P)
  start_shared "$shared"
fi
rm -f "$STATE/nodes"
nodes=$(node_names)
echo "$nodes" > "$STATE/nodes"
count=$(echo "$nodes" | wc -l)

cpus=${LOCAL_SLURM_CPUS:-$(nproc)}
overrides=""
[ "$cpus" -gt "$(nproc)" ] || [ "$count" -gt 1 ] && overrides="SlurmdParameters=config_overrides"
# each slurmd sees the whole machine: share its memory out (above what slurmd sees: INVALID)
mem=$(free -m | awk -v n="$count" '/^Mem:/ {print int($2 * 0.95 / n)}')
node_lines=""
port=17021
for node in $nodes; do
  if [ "$count" = 1 ]; then
    node_lines+="NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"$'\n'
  else
    node_lines+="NodeName=$node NodeHostname=localhost NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$mem State=UNKNOWN"$'\n'
    port=$((port + 1))
  fi
done
if [ "$count" = 1 ]; then
  node_paths="SlurmdSpoolDir=/var/spool/slurmd
SlurmdPidFile=/run/slurmd.pid
SlurmdLogFile=$LOGDIR/slurmd.log"
else  # %n: one spool folder, pid file and log per node
  node_paths="SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=$LOGDIR/slurmd-%n.log"
fi
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
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
SchedulerParameters=sched_interval=1
ReturnToService=2
SlurmdTimeout=30
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
$node_paths
MessageTimeout=10
KillWait=2
MinJobAge=60
InactiveLimit=0
Waittime=0
$overrides
$node_lines
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

# -c -i: a fresh cluster state each time
start_daemon slurmctld /run/slurmctld.pid /usr/sbin/slurmctld -c -i
for node in $nodes; do
  if [ "$count" = 1 ]; then pidfile=/run/slurmd.pid; else pidfile=/run/slurmd-$node.pid; fi
  mkdir -p "/var/spool/slurmd/$node"
  if [ -n "$shared" ]; then
    # the node's own client of the shared folder, at the same path, for it and its jobs
    mount_client "$STATE/clients/$node" "sshfs-$node"
    start_daemon "slurmd-$node" "$pidfile" unshare -m --propagation private sh -c \
      'mount --bind "$1" "$2" && exec /usr/sbin/slurmd -N "$3"' sh "$STATE/clients/$node" "$shared" "$node"
  else
    start_daemon "slurmd-$node" "$pidfile" /usr/sbin/slurmd -N "$node"
  fi
done

usable() {
  local states
  states=$(sinfo -h -N -o %T 2>/dev/null | sort -u || true)
  [ "$(sinfo -h -N -o %N 2>/dev/null | sort -u | wc -l)" = "$count" ] || return 1
  ! echo "$states" | grep -qvE '^(idle|mixed|allocated)'
}
for i in $(seq 60); do
  if usable; then sinfo; exit 0; fi
  [ "$i" = 20 ] && scontrol update nodename="$(echo $nodes | tr ' ' ,)" state=resume 2>/dev/null || true
  sleep 0.5
done
say "the nodes never became usable:"
sinfo -N >&2 || true
tail -n 20 "$LOGDIR"/slurmctld.log "$LOGDIR"/slurmd*.log >&2 || true
exit 1
