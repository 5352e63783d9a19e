#!/usr/bin/env bash
# deploy/local-cluster.sh: a three-node Ray cluster on this one machine, with two fake GPU types.
#
#   deploy/local-cluster.sh up       start it (or say it is already up), wait until 3 nodes are alive
#   deploy/local-cluster.sh status   list its nodes; exit 0 when all 3 are alive, 1 otherwise
#   deploy/local-cluster.sh down     stop exactly this cluster's processes (never `ray stop`)
#
# Nodes (each is a `ray start --block` in a session of its own):
#   head  --num-cpus=$STEPSCOPE_LOCAL_HEAD_CPUS (1) --num-gpus=0
#   a100  --num-gpus=1  resources {"accelerator_type:A100": 1, "gpu_model:A100-SXM4-40GB": 1}
#   h100  --num-gpus=1  resources {"accelerator_type:H100": 1, "gpu_model:H100-SXM-80GB": 1}
# The GPUs are logical only: a task asking for num_gpus=1 is scheduled there and gets
# CUDA_VISIBLE_DEVICES=0, and torch falls back to the CPU. The resource names follow the
# stepscope convention: Ray's own `accelerator_type:<T>` (which Ray sets by itself on a real
# GPU) plus `gpu_model:<LABEL>` = number of GPUs on the node.
#
# Driver: `stepscope run SPEC --address 127.0.0.1:$STEPSCOPE_LOCAL_PORT`, or
# `ray.init(address="127.0.0.1:$STEPSCOPE_LOCAL_PORT")`; a driver on the cluster, through
# the head's job server (the dashboard, on BASE+7): `stepscope submit SPEC --address
# http://127.0.0.1:$((STEPSCOPE_LOCAL_PORT + 8)) --store /ABSOLUTE/PATH`. `up` prints the exact lines.
#
# Token authentication (Ray >= 2.52): ON by default (STEPSCOPE_LOCAL_AUTH=token).
#   All nodes run with RAY_AUTH_MODE=token and read the token from the default file,
#   ~/.ray/auth_token (`up` creates it with `ray get-auth-token --generate` if it is missing;
#   RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, if set, take precedence as usual in Ray).
#   A driver on this host, as the same user, needs only RAY_AUTH_MODE=token in its
#   environment: it reads the same file. Without it, ray.init(address=...) does NOT turn
#   token auth on by itself (Ray only does that for address "auto"/None), and the
#   connection is refused.
#   STEPSCOPE_LOCAL_AUTH=disabled starts the nodes with RAY_AUTH_MODE=disabled instead
#   (any local process can then use the cluster; drivers need nothing).
#
# Settings (environment variables):
#   STEPSCOPE_LOCAL_PORT          GCS port of the head; the address is 127.0.0.1:PORT  (26379)
#                                 (defaults stay below Linux's ephemeral range, 32768+, so
#                                 outgoing connections never hold them)
#   STEPSCOPE_LOCAL_PORT_BASE     first of 30 ports for the nodes' other servers       (PORT+1)
#                                 node i (head 0, a100 1, h100 2) uses BASE+10*i+0..7
#   STEPSCOPE_LOCAL_DIR           Ray --temp-dir of all three nodes, plus this script's
#                                 state and logs; must be short (unix socket paths)
#                                 (/tmp/stepscope-ray-<uid>-<PORT>)
#   STEPSCOPE_LOCAL_AUTH          token | disabled                                      (token)
#   STEPSCOPE_LOCAL_HEAD_CPUS     logical CPUs of the head                              (1)
#   STEPSCOPE_LOCAL_WORKER_CPUS   logical CPUs of each GPU worker                       (1)
#   STEPSCOPE_LOCAL_OBJECT_STORE  object store bytes per node                           (100000000)
#   STEPSCOPE_LOCAL_DASHBOARD     1: the head runs the dashboard, which serves the Ray   (1)
#                                 Jobs API (`stepscope submit`) on BASE+7; 0: none,
#                                 about 0.2-0.3 GiB less memory
#   STEPSCOPE_LOCAL_TIMEOUT       seconds to wait for the nodes                         (90)
#   STEPSCOPE_LOCAL_KEEP_LOGS     1: `down` keeps STEPSCOPE_LOCAL_DIR (logs) on disk    (0)
#   STEPSCOPE_LOCAL_GRACE         seconds `down` waits after SIGTERM, per phase         (10)
#   STEPSCOPE_RAY, STEPSCOPE_PYTHON   the `ray` CLI and the Python that has ray installed
#                                 (`ray` on PATH, and the python beside it)
#
# How `down` stops exactly these processes and nothing else (never `ray stop`, which stops
# every Ray on the machine): each node's `ray start --block` is started as the leader of a new
# session, and its PID is recorded in <DIR>/nodes. Every Ray process of the node (GCS, raylet,
# agents, and the workers, which Ray moves into process groups of their own) stays in that
# session. `down` sends SIGTERM to the workers' `ray start`, then the head's (each stops its
# own processes), waits up to STEPSCOPE_LOCAL_GRACE seconds for their sessions to end, sends
# SIGKILL to whatever is left, including any process that names <DIR> or carries the
# environment variable STEPSCOPE_LOCAL_CLUSTER=<DIR> that `up` gives every node, and then
# checks that none remains.
# Linux only (it reads /proc).

set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: deploy/local-cluster.sh up|down|status

  up       start a Ray head and two fake-GPU workers (A100, H100) on this machine
  status   show this cluster's nodes; exit 0 when all three are alive
  down     stop exactly this cluster's processes

Settings come from STEPSCOPE_LOCAL_* environment variables; see the top of this script.
EOF
  exit 2
}

[ $# -eq 1 ] || usage
case "$1" in
  up | down | status) CMD=$1 ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac

PORT=${STEPSCOPE_LOCAL_PORT:-26379}
PORT_BASE=${STEPSCOPE_LOCAL_PORT_BASE:-$((PORT + 1))}
DIR=${STEPSCOPE_LOCAL_DIR:-/tmp/stepscope-ray-$(id -u)-$PORT}
AUTH=${STEPSCOPE_LOCAL_AUTH:-token}
HEAD_CPUS=${STEPSCOPE_LOCAL_HEAD_CPUS:-1}
WORKER_CPUS=${STEPSCOPE_LOCAL_WORKER_CPUS:-1}
OBJECT_STORE=${STEPSCOPE_LOCAL_OBJECT_STORE:-100000000}
DASHBOARD=${STEPSCOPE_LOCAL_DASHBOARD:-1}
TIMEOUT=${STEPSCOPE_LOCAL_TIMEOUT:-90}
KEEP_LOGS=${STEPSCOPE_LOCAL_KEEP_LOGS:-0}
GRACE=${STEPSCOPE_LOCAL_GRACE:-10}
ADDRESS=127.0.0.1:$PORT
NODES_FILE=$DIR/nodes
MARKER=STEPSCOPE_LOCAL_CLUSTER=$DIR

# name | accelerator type | precise model label
WORKERS=("a100|A100|A100-SXM4-40GB" "h100|H100|H100-SXM-80GB")
EXPECTED_NODES=$((1 + ${#WORKERS[@]}))

case "$AUTH" in
  token | disabled) ;;
  *) echo "local-cluster: STEPSCOPE_LOCAL_AUTH must be 'token' or 'disabled', not '$AUTH'" >&2; exit 2 ;;
esac
case "$DASHBOARD" in
  0 | 1) ;;
  *) echo "local-cluster: STEPSCOPE_LOCAL_DASHBOARD must be 1 or 0, not '$DASHBOARD'" >&2; exit 2 ;;
esac
JOBS_ADDRESS=http://127.0.0.1:$((PORT_BASE + 7))

log() { echo "local-cluster: $*" >&2; }

find_ray() {
  RAY=${STEPSCOPE_RAY:-$(command -v ray || true)}
  if [ -z "$RAY" ] || [ ! -x "$RAY" ]; then
    log "no 'ray' CLI found; activate the environment that has ray[default] or set STEPSCOPE_RAY"
    exit 1
  fi
  PY=${STEPSCOPE_PYTHON:-}
  if [ -z "$PY" ]; then
    PY=$(dirname "$RAY")/python
    [ -x "$PY" ] || PY=$(command -v python3)
  fi
}

is_alive() { # a live process, not a zombie
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# is_ours PID: the process names this cluster's directory in its command line or carries its
# marker in its environment.
is_ours() {
  # "$DIR/..." or "--temp-dir=$DIR" exactly: /tmp/x-2637 must not match /tmp/x-26379.
  { tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -e "$DIR/" -e "=$DIR "; } 2>/dev/null && return 0
  { tr '\0' '\n' <"/proc/$1/environ" | grep -qxF "$MARKER"; } 2>/dev/null
}

# pids_of [marker]: PIDs of the live processes in the sessions of the node leaders in LEADERS
# and, with `marker`, of any other process that is_ours. The session is what makes this
# complete: Ray moves its workers into process groups of their own (setpgid) but never into
# a new session, and it renames them (`ray::IDLE`), which can also wipe what
# /proc/PID/environ shows, so neither the name nor the environment alone finds them all.
pids_of() {
  local mode=${1:-} p pid stat rest sid leader
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    stat=$(cat "$p/stat" 2>/dev/null) || continue
    rest=${stat##*) } # the fields after "(comm)"; comm itself may contain spaces
    # shellcheck disable=SC2086
    set -- $rest
    [ "${1:-}" = Z ] && continue # a zombie is dead already, only not yet reaped
    sid=${4:-}
    for leader in "${LEADERS[@]}"; do
      if [ "$sid" = "$leader" ]; then
        echo "$pid"
        continue 2
      fi
    done
    if [ "$mode" = marker ] && is_ours "$pid"; then
      echo "$pid"
    fi
  done
}

LEADERS=()
HEAD_LEADERS=()
WORKER_LEADERS=()
# load_leaders: the recorded `ray start` PIDs whose sessions are this cluster's. A live leader
# must be ours (is_ours); a dead one counts if the record is from this boot: while any
# process of its session lives, the kernel does not hand its PID (the session id) to anyone
# else, so processes in that session are ours (orphaned workers of a crashed node).
load_leaders() {
  local name pid this_boot=0
  LEADERS=() HEAD_LEADERS=() WORKER_LEADERS=()
  [ -f "$NODES_FILE" ] || return 0
  [ "$(stat -c %Y "$NODES_FILE")" -ge "$(awk '/^btime/ {print $2}' /proc/stat)" ] && this_boot=1
  while read -r name pid; do
    [ -n "${pid:-}" ] || continue
    if is_alive "$pid"; then
      is_ours "$pid" || continue
    else
      [ $this_boot -eq 1 ] || continue
    fi
    if [ "$name" = head ]; then HEAD_LEADERS+=("$pid"); else WORKER_LEADERS+=("$pid"); fi
    LEADERS+=("$pid")
  done <"$NODES_FILE"
}

# "name pid" lines of the recorded node leaders that are still alive.
live_nodes() {
  [ -f "$NODES_FILE" ] || return 0
  local name pid
  while read -r name pid; do
    [ -n "${pid:-}" ] && is_alive "$pid" && is_ours "$pid" && echo "$name $pid"
  done <"$NODES_FILE"
  return 0
}

# auth_env [generate]: the auth mode of this cluster, for its nodes and for our own driver.
auth_env() {
  export RAY_AUTH_MODE=$AUTH
  if [ "$AUTH" = token ] && [ "${1:-}" = generate ]; then
    # Creates ~/.ray/auth_token only if no token exists; prints the token, hence /dev/null.
    "$RAY" get-auth-token --generate >/dev/null
  fi
}

# query WANT TIMEOUT: connect as a driver, wait up to TIMEOUT s for WANT alive nodes, list
# the alive nodes; exit 0 when there are at least WANT.
query() {
  "$PY" - "$ADDRESS" "$@" <<'PYEOF'
import logging, sys, time
import ray

address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)

def alive():
    return [n for n in ray.nodes() if n["Alive"]]

deadline = time.monotonic() + timeout
while len(alive()) < want and time.monotonic() < deadline:
    time.sleep(0.5)
nodes = alive()
for n in sorted(nodes, key=lambda n: n["Resources"].get("GPU", 0)):
    res = n["Resources"]
    tags = sorted(k for k in res if k.startswith(("accelerator_type:", "gpu_model:")))
    kind = "head" if "node:__internal_head__" in res else "worker"
    print(f"  {kind:6} {n['NodeID']}  CPU={res.get('CPU', 0):g} GPU={res.get('GPU', 0):g} {' '.join(tags)}")
sys.exit(0 if len(nodes) >= want else 1)
PYEOF
}

# wait_job_server TIMEOUT: wait until the head's job server answers HTTP (any status: with
# token authentication it answers 401 without a token); exit 0 when it does.
wait_job_server() {
  "$PY" - "$JOBS_ADDRESS" "$1" <<'PYEOF'
import sys, time, urllib.error, urllib.request

url, timeout = sys.argv[1] + "/api/version", float(sys.argv[2])
deadline = time.monotonic() + timeout
while True:
    try:
        urllib.request.urlopen(url, timeout=5).close()
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        if time.monotonic() >= deadline:
            sys.exit(1)
        time.sleep(0.5)
PYEOF
}

check_ports_free() {
  "$PY" - "$PORT" "$PORT_BASE" <<'PYEOF'
import socket, sys
port, base = int(sys.argv[1]), int(sys.argv[2])
busy = []
for p in [port] + list(range(base, base + 30)):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
    try:
        s.bind(("0.0.0.0", p))
    except OSError:
        busy.append(p)
    finally:
        s.close()
if busy:
    print(f"local-cluster: ports in use: {busy}; choose others with STEPSCOPE_LOCAL_PORT / "
          "STEPSCOPE_LOCAL_PORT_BASE", file=sys.stderr)
    sys.exit(1)
PYEOF
}

# start_node NAME INDEX ARGS...: `ray start --block` as the leader of a new session, in the
# background; returns once the node reports "Ray runtime started" (nodes are started one at a
# time: two raylets starting at once in one session directory race for the same socket names).
start_node() {
  local name=$1 index=$2
  shift 2
  local b=$((PORT_BASE + 10 * index)) node_log=$DIR/$name.log
  # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: on SIGTERM, stop at once instead of draining the
  # node for 30 s first (draining is for Serve replicas; nothing here needs it).
  env "$MARKER" RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 "$PY" -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' \
    "$RAY" start --block --temp-dir="$DIR" --disable-usage-stats \
    --object-store-memory="$OBJECT_STORE" \
    --node-manager-port=$b --object-manager-port=$((b + 1)) \
    --dashboard-agent-listen-port=$((b + 2)) --dashboard-agent-grpc-port=$((b + 3)) \
    --metrics-export-port=$((b + 4)) --runtime-env-agent-port=$((b + 5)) \
    --min-worker-port=0 --max-worker-port=0 \
    "$@" >"$node_log" 2>&1 </dev/null &
  local pid=$!
  echo "$name $pid" >>"$NODES_FILE"
  local deadline=$((SECONDS + TIMEOUT))
  until grep -q "Ray runtime started" "$node_log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      log "node '$name' did not start; the end of $node_log:"
      tail -n 20 "$node_log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  log "started $name (pid $pid)"
}

# signal_and_wait SIGNAL SECONDS [marker]: signal every process pids_of finds, then wait up to
# SECONDS for them to be gone. True when none is left.
signal_and_wait() {
  local sig=$1 mode=${3:-} pids deadline=$((SECONDS + $2))
  pids=$(pids_of "$mode")
  [ -z "$pids" ] && return 0
  # shellcheck disable=SC2086
  kill "-$sig" $pids 2>/dev/null || true
  local p alive
  while :; do
    alive=0
    for p in $pids; do is_alive "$p" && alive=1 && break; done
    [ $alive -eq 0 ] && return 0
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.25
  done
}

# stop_sessions WHAT LEADER...: SIGTERM to each node's `ray start --block`, which then stops
# its own processes (GCS, raylet, agents, workers); waits for the whole sessions (LEADERS) to
# end, for at most GRACE seconds.
stop_sessions() {
  local what=$1 deadline=$((SECONDS + GRACE))
  shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  while [ -n "$(pids_of)" ]; do
    if [ $SECONDS -ge $deadline ]; then
      log "$what: still running ${GRACE}s after SIGTERM"
      return 1
    fi
    sleep 0.5
  done
}

cmd_down() {
  load_leaders
  if [ -z "$(pids_of marker)" ]; then
    log "not running (no process of $DIR)"
    [ "$KEEP_LOGS" = 1 ] || rm -rf "$DIR"
    return 0
  fi
  local all=("${LEADERS[@]}")
  # Workers first, so the head does not spend its shutdown waiting for them; SIGTERM lets
  # each Ray process exit cleanly, SIGKILL takes whatever did not within the grace period.
  local t0=$SECONDS left
  LEADERS=("${WORKER_LEADERS[@]}")
  stop_sessions "worker nodes" "${WORKER_LEADERS[@]}" || true
  LEADERS=("${HEAD_LEADERS[@]}")
  stop_sessions "head node" "${HEAD_LEADERS[@]}" || true
  LEADERS=("${all[@]}")
  left=$(pids_of marker)
  if [ -n "$left" ]; then
    log "SIGKILL to $(echo "$left" | wc -l) remaining process(es)"
    signal_and_wait KILL 10 marker || true
  fi
  log "shutdown took $((SECONDS - t0))s"
  left=$(pids_of marker)
  if [ -n "$left" ]; then
    log "processes still alive after SIGKILL: $(echo $left)"
    return 1
  fi
  [ "$KEEP_LOGS" = 1 ] || rm -rf "$DIR"
  log "stopped; no process of $DIR remains"
}

cmd_up() {
  local running
  running=$(live_nodes | wc -l)
  if [ "$running" -eq "$EXPECTED_NODES" ]; then
    log "already up ($DIR); use 'status' or 'down'"
    print_address
    return 0
  elif [ "$running" -gt 0 ]; then
    log "only $running of $EXPECTED_NODES nodes are running ($DIR); run 'down' first"
    exit 1
  fi
  if [ ${#DIR} -gt 60 ]; then
    log "STEPSCOPE_LOCAL_DIR is too long (${#DIR} > 60 characters): Ray's unix socket paths would not fit"
    exit 2
  fi
  load_leaders
  if [ -n "$(pids_of marker)" ]; then
    log "stray processes of $DIR are still running; run 'down' first"
    exit 1
  fi
  check_ports_free
  auth_env generate
  rm -rf "$DIR"
  mkdir -p "$DIR"
  : >"$NODES_FILE"
  echo "$DASHBOARD" >"$DIR/dashboard" # how `status` knows, whatever its own environment says
  local head_args=(--head --port="$PORT" --num-cpus="$HEAD_CPUS" --num-gpus=0
    --ray-client-server-port=$((PORT_BASE + 6)) --dashboard-port=$((PORT_BASE + 7)))
  if [ "$DASHBOARD" = 1 ]; then
    head_args+=(--include-dashboard=true --dashboard-host=127.0.0.1)
  else
    head_args+=(--include-dashboard=false)
  fi
  start_node head 0 "${head_args[@]}" || { KEEP_LOGS=1 cmd_down || true; exit 1; }
  local i=1 spec name accel model
  for spec in "${WORKERS[@]}"; do
    IFS='|' read -r name accel model <<<"$spec"
    start_node "$name" "$i" --address="$ADDRESS" --num-cpus="$WORKER_CPUS" --num-gpus=1 \
      --resources="{\"accelerator_type:$accel\": 1, \"gpu_model:$model\": 1}" ||
      { KEEP_LOGS=1 cmd_down || true; exit 1; }
    i=$((i + 1))
  done
  log "waiting for $EXPECTED_NODES alive nodes"
  if ! query "$EXPECTED_NODES" "$TIMEOUT"; then
    log "fewer than $EXPECTED_NODES nodes alive after ${TIMEOUT}s; see the logs in $DIR"
    KEEP_LOGS=1 cmd_down || true
    exit 1
  fi
  if [ "$DASHBOARD" = 1 ] && ! wait_job_server "$TIMEOUT"; then
    log "the job server at $JOBS_ADDRESS did not answer within ${TIMEOUT}s; see $DIR/session_latest/logs/dashboard.log"
    KEEP_LOGS=1 cmd_down || true
    exit 1
  fi
  print_address
}

print_address() {
  local dashboard
  dashboard=$(cat "$DIR/dashboard" 2>/dev/null || echo "$DASHBOARD")
  echo "address: $ADDRESS"
  echo "  stepscope run SPEC --address $ADDRESS"
  if [ "$dashboard" = 1 ]; then
    echo "  stepscope submit SPEC --address $JOBS_ADDRESS --store /ABSOLUTE/PATH"
  else
    echo "  (no job server for 'stepscope submit': started with STEPSCOPE_LOCAL_DASHBOARD=0)"
  fi
  if [ "$AUTH" = token ]; then
    echo "  drivers need: export RAY_AUTH_MODE=token   (token read from ~/.ray/auth_token)"
  fi
}

cmd_status() {
  local nodes
  nodes=$(live_nodes)
  if [ -z "$nodes" ]; then
    echo "down ($DIR)"
    return 1
  fi
  echo "node processes (name pid):"
  echo "$nodes" | sed 's/^/  /'
  auth_env
  echo "Ray nodes at $ADDRESS:"
  if query "$EXPECTED_NODES" 0 && [ "$(echo "$nodes" | wc -l)" -eq "$EXPECTED_NODES" ]; then
    print_address
    return 0
  fi
  return 1
}

find_ray
case "$CMD" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
esac
