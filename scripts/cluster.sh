#!/usr/bin/env bash
# A local Partyline cluster on loopback: one redis-server (or a 3-primary Redis Cluster), three
# nodes, two gateways.
#
#   scripts/cluster.sh up       build the release binary if needed, start everything, wait
#                               until every node is registered and every gateway answers
#   scripts/cluster.sh status   processes (alive or not), members, shards and rooms per node
#   scripts/cluster.sh logs [NAME]  the last lines of every log (or of one: redis, node-1, gateway-1, ...)
#   scripts/cluster.sh down     stop exactly the processes `up` started (by their pid files)
#
# Processes get the same PARTYLINE_* variables a container deployment uses (PARTYLINE_REDIS_URL,
# PARTYLINE_CLUSTER_SECRET, PARTYLINE_LISTEN, PARTYLINE_NODE_ID, PARTYLINE_HOST, PARTYLINE_PORT,
# PARTYLINE_LEASE_PROFILE); other PARTYLINE_* variables in your environment (limits, say) pass
# through. Settings (environment):
#   CLUSTER_REDIS=single                    single: one redis-server; cluster: a Redis Cluster of three
#                                           primaries (nodes and gateways get a redis+cluster:// URL)
#   CLUSTER_REDIS_PORT=6390                 Redis port (CLUSTER_REDIS=single)
#   CLUSTER_REDIS_PORTS="6391 6392 6393"    the primaries' ports (CLUSTER_REDIS=cluster; the cluster
#                                           bus uses port + 10000)
#   CLUSTER_NODE_PORTS="7001 7002 7003"     one node per port (gRPC), ids node-1, node-2, ...
#   CLUSTER_GATEWAY_PORTS="1999 2999"       one gateway per port (HTTP/WebSocket)
#   CLUSTER_CONSOLE_PORT=                   e.g. 9100: gateway-1 serves its metrics, health and the
#                                           operator console on 127.0.0.1:<port> (token in
#                                           <dir>/console-token; any user name); empty: off
#   CLUSTER_DIR=.partyline/cluster          state: pid files, logs, Redis data, the secret
#   CLUSTER_WAIT=60                         seconds `up` waits for readiness
#   CLUSTER_REDIS_PERSIST=1                 Redis is durable (AOF): acknowledged writes survive a
#                                           Redis crash and `down`/`up`; 0: throwaway, in memory
#   CLUSTER_REDIS_FSYNC=always              AOF fsync policy: always (no acknowledged write is ever
#                                           lost) or everysec (faster; a crash loses up to ~1 s)
#   CLUSTER_INIT=0                          1: `partyline init --start-over`: after Redis lost the
#                                           cluster's data (`up` refuses and says so), start over, empty
#   CLUSTER_NO_BUILD=0                      1: do not run cargo build
#   PARTYLINE_BIN=target/release/partyline  the binary
#   PARTYLINE_CLUSTER_SECRET                default: generated once into $CLUSTER_DIR/secret
#   PARTYLINE_LEASE_PROFILE=fast            lease timing (fast: TTL 3 s; standard: 10 s)
#   PARTYLINE_REDIS_PREFIX=pl               Redis key prefix
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DIR="${CLUSTER_DIR:-$ROOT/.partyline/cluster}"
# `status`, `logs` and `down` use the Redis mode `up` used unless told otherwise.
REDIS_MODE="${CLUSTER_REDIS:-$(cat "$DIR/redis-mode" 2>/dev/null || echo single)}"
case "$REDIS_MODE" in
  single | cluster) ;;
  *) printf 'cluster.sh: CLUSTER_REDIS=%s: use single or cluster\n' "$REDIS_MODE" >&2; exit 2 ;;
esac
REDIS_PORT="${CLUSTER_REDIS_PORT:-6390}"
read -r -a REDIS_PORTS <<<"${CLUSTER_REDIS_PORTS:-6391 6392 6393}"
read -r -a NODE_PORTS <<<"${CLUSTER_NODE_PORTS:-7001 7002 7003}"
read -r -a GATEWAY_PORTS <<<"${CLUSTER_GATEWAY_PORTS:-1999 2999}"
WAIT="${CLUSTER_WAIT:-60}"
BIN="${PARTYLINE_BIN:-$ROOT/target/release/partyline}"
LEASE_PROFILE="${PARTYLINE_LEASE_PROFILE:-fast}"
PREFIX="${PARTYLINE_REDIS_PREFIX:-pl}"
if [ "$REDIS_MODE" = cluster ]; then
  REDIS_URL="redis+cluster://$(printf '127.0.0.1:%s,' "${REDIS_PORTS[@]}" | sed 's/,$//')"
  REDIS_PORT="${REDIS_PORTS[0]}"
  MEMBERS_KEY="$PREFIX:{m}:members"
  NODE_KEY="$PREFIX:{m}:node:"
else
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  MEMBERS_KEY="$PREFIX:members"
  NODE_KEY="$PREFIX:node:"
fi
PIDS="$DIR/pids"
LOGS="$DIR/logs"

say() { printf '%s\n' "$*"; }
die() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }

# ---- pid files: "<pid> <start time>" so a reused pid is never mistaken for ours

start_time() { # the process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }" # fields after "(comm) "
  # shellcheck disable=SC2086
  set -- $stat
  printf '%s\n' "${20}"
}

# alive NAME: true if the process recorded for NAME runs (and is the one we started).
alive() {
  local f="$PIDS/$1.pid" pid st
  [ -f "$f" ] || return 1
  read -r pid st <"$f" || return 1
  [ -n "$pid" ] && [ "$(start_time "$pid" 2>/dev/null)" = "$st" ]
}

pid_of() { local pid _st; read -r pid _st <"$PIDS/$1.pid"; printf '%s\n' "$pid"; }

# The Redis processes: redis, or redis-1, redis-2, ... for a Redis Cluster.
redis_names() {
  local i
  if [ "$REDIS_MODE" = cluster ]; then
    for i in "${!REDIS_PORTS[@]}"; do printf 'redis-%d\n' "$((i + 1))"; done
  else
    printf 'redis\n'
  fi
}

# The names in start order.
names() {
  redis_names
  local i
  for i in "${!NODE_PORTS[@]}"; do printf 'node-%d\n' "$((i + 1))"; done
  for i in "${!GATEWAY_PORTS[@]}"; do printf 'gateway-%d\n' "$((i + 1))"; done
}

recorded() { # names with a pid file, in start order, plus any other pid files
  local n
  for n in $(names); do [ -f "$PIDS/$n.pid" ] && printf '%s\n' "$n"; done
  for f in "$PIDS"/*.pid; do
    [ -e "$f" ] || continue
    n="$(basename "$f" .pid)"
    names | grep -qx "$n" || printf '%s\n' "$n"
  done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

secret() {
  if [ -n "${PARTYLINE_CLUSTER_SECRET:-}" ]; then
    printf '%s' "$PARTYLINE_CLUSTER_SECRET"
  elif [ -s "$DIR/secret" ]; then
    cat "$DIR/secret"
  else
    return 1
  fi
}

# launch NAME COMMAND...: starts COMMAND detached (own session), logs to $LOGS/NAME.log.
launch() {
  local name="$1"; shift
  local log="$LOGS/$name.log"
  : >"$log"
  setsid "$@" >>"$log" 2>&1 </dev/null &
  local pid=$!
  local st=""
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    st="$(start_time "$pid" 2>/dev/null)" && break
    sleep 0.05
  done
  [ -n "$st" ] || { tail_log "$name"; die "$name exited at once (log: $log)"; }
  printf '%s %s\n' "$pid" "$st" >"$PIDS/$name.pid"
}

tail_log() {
  local log="$LOGS/$1.log"
  if [ -s "$log" ]; then
    printf -- '--- last lines of %s\n' "$log" >&2
    tail -n 25 "$log" >&2
    printf -- '---\n' >&2
  fi
}

redis_cli() { redis-cli -c -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# wait_for NAME WHAT CHECK...: polls CHECK until it succeeds; fails if NAME dies or time runs out.
wait_for() {
  local name="$1" what="$2"; shift 2
  local deadline=$((SECONDS + WAIT))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      tail_log "$name"
      fail_up "$name exited while starting ($what)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail_log "$name"
      fail_up "$name: $what not reached within ${WAIT}s"
    fi
    sleep 0.2
  done
}

fail_up() {
  printf 'cluster.sh: %s\n' "$*" >&2
  printf 'cluster.sh: stopping what was started; logs stay in %s\n' "$LOGS" >&2
  stop_all quiet
  exit 1
}

node_registered() { # node_registered ID
  redis_cli SISMEMBER "$MEMBERS_KEY" "$1" | grep -qx 1 && [ "$(redis_cli EXISTS "$NODE_KEY$1")" = 1 ]
}

gateway_answers() { # gateway_answers PORT [ADMIN_PORT]: any HTTP answer on the health endpoint
  local code url="http://127.0.0.1:$1/_partyline/health"
  [ -n "${2:-}" ] && url="http://127.0.0.1:$2/healthz"
  code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url")" || return 1
  [ "$code" != 000 ]
}

# console_env I: the environment that turns the console on for gateway I (gateway-1 only).
console_env() {
  [ "$1" = 0 ] && [ -n "${CLUSTER_CONSOLE_PORT:-}" ] || return 0
  [ -s "$DIR/console-token" ] || (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/console-token")
  printf '%s\n' "PARTYLINE_ADMIN_LISTEN=127.0.0.1:$CLUSTER_CONSOLE_PORT" "PARTYLINE_CONSOLE_TOKEN_FILE=$DIR/console-token"
}

# console_port I: the admin port of gateway I, if it has one.
console_port() {
  [ "$1" = 0 ] && [ -n "${CLUSTER_CONSOLE_PORT:-}" ] && printf '%s' "$CLUSTER_CONSOLE_PORT"
  return 0
}

# ---- up

build() {
  [ "${CLUSTER_NO_BUILD:-0}" = 1 ] && return 0
  [ -n "${PARTYLINE_BIN:-}" ] && return 0
  say "building the release binary (cargo build --release --bin partyline)"
  cargo build --release --bin partyline >"$DIR/build.log" 2>&1 || {
    tail -n 30 "$DIR/build.log" >&2
    die "the build failed (full log: $DIR/build.log)"
  }
}

cmd_up() {
  mkdir -p "$PIDS" "$LOGS"
  local n any=0 stale=0
  for n in $(recorded); do
    if alive "$n"; then any=1; else stale=1; fi
  done
  if [ "$any" = 1 ]; then
    say "the cluster is already up (scripts/cluster.sh status shows it; down stops it)"
    print_where
    return 0
  fi
  if [ "$stale" = 1 ]; then
    say "removing stale pid files from a previous run"
    rm -f "$PIDS"/*.pid
  fi
  command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server; scripts/test.sh installs it too)"
  command -v redis-cli >/dev/null || die "redis-cli is not installed (it comes with redis-server)"
  command -v curl >/dev/null || die "curl is not installed"
  local p
  local redis_ports=("$REDIS_PORT")
  [ "$REDIS_MODE" = cluster ] && redis_ports=("${REDIS_PORTS[@]}")
  for p in "${redis_ports[@]}" "${NODE_PORTS[@]}" "${GATEWAY_PORTS[@]}"; do
    port_busy "$p" && die "port $p on 127.0.0.1 is already in use: stop what uses it, or pick other ports (CLUSTER_REDIS_PORT(S), CLUSTER_NODE_PORTS, CLUSTER_GATEWAY_PORTS)"
  done
  build
  [ -x "$BIN" ] || die "no binary at $BIN"
  if ! secret >/dev/null; then
    umask 077
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/secret"
    umask 022
  fi
  local sec
  sec="$(secret)"
  trap 'fail_up "interrupted"' INT TERM

  printf '%s\n' "$REDIS_MODE" >"$DIR/redis-mode"
  if [ "$REDIS_MODE" = cluster ]; then
    start_redis_cluster
  else
    start_redis redis "$REDIS_PORT" "$DIR/redis"
  fi
  init_cluster

  local i
  for i in "${!NODE_PORTS[@]}"; do
    launch "node-$((i + 1))" env \
      PARTYLINE_REDIS_URL="$REDIS_URL" PARTYLINE_REDIS_PREFIX="$PREFIX" PARTYLINE_CLUSTER_SECRET="$sec" \
      PARTYLINE_LISTEN="127.0.0.1:${NODE_PORTS[$i]}" PARTYLINE_NODE_ID="node-$((i + 1))" \
      PARTYLINE_LEASE_PROFILE="$LEASE_PROFILE" "$BIN" node
  done
  for i in "${!GATEWAY_PORTS[@]}"; do
    local console=()
    mapfile -t console < <(console_env "$i")
    launch "gateway-$((i + 1))" env \
      PARTYLINE_REDIS_URL="$REDIS_URL" PARTYLINE_REDIS_PREFIX="$PREFIX" PARTYLINE_CLUSTER_SECRET="$sec" \
      PARTYLINE_HOST=127.0.0.1 PARTYLINE_PORT="${GATEWAY_PORTS[$i]}" "${console[@]}" "$BIN" gateway
  done
  for i in "${!NODE_PORTS[@]}"; do
    wait_for "node-$((i + 1))" "registered in Redis" node_registered "node-$((i + 1))"
  done
  for i in "${!GATEWAY_PORTS[@]}"; do
    wait_for "gateway-$((i + 1))" "answering HTTP on :${GATEWAY_PORTS[$i]}" gateway_answers "${GATEWAY_PORTS[$i]}" "$(console_port "$i")"
  done
  trap - INT TERM
  say "the cluster is up"
  print_where
}

# Creates the cluster in Redis (`partyline init`; nodes never create one by themselves), or finds
# it, at every `up`. init records the cluster's id beside Redis's data, so if durable Redis ever
# comes back without it, init refuses and `up` stops, saying why; CLUSTER_INIT=1 starts the
# cluster over, empty (`--start-over`). A throwaway Redis is initialized afresh, without a record.
init_cluster() {
  local args=(init) said
  if [ "${CLUSTER_REDIS_PERSIST:-1}" = 1 ]; then
    args+=(--record "$DIR/$(redis_names | head -n 1)/partyline-init-record")
  fi
  [ "${CLUSTER_INIT:-0}" = 1 ] && args+=(--start-over)
  said="$(PARTYLINE_REDIS_URL="$REDIS_URL" PARTYLINE_REDIS_PREFIX="$PREFIX" "$BIN" "${args[@]}" 2>>"$LOGS/init.log")" ||
    { tail -n 20 "$LOGS/init.log" >&2; fail_up "partyline init failed (log: $LOGS/init.log); if Redis lost the cluster's data and that is fine, CLUSTER_INIT=1 scripts/cluster.sh up starts it over, empty"; }
  say "$said"
}

# start_redis NAME PORT DIR [ARGS...]: one redis-server, durable unless CLUSTER_REDIS_PERSIST=0.
start_redis() {
  local name="$1" port="$2" dir="$3"; shift 3
  mkdir -p "$dir"
  local persist=(--save "" --appendonly no)
  if [ "${CLUSTER_REDIS_PERSIST:-1}" = 1 ]; then
    persist=(--save "" --appendonly yes --appendfsync "${CLUSTER_REDIS_FSYNC:-always}")
  else
    # The init record goes with the data it vouches for.
    rm -rf "$dir/"*.rdb "$dir/"*.aof "$dir/appendonlydir" "$dir/nodes.conf" "$dir/partyline-init-record" \
      "$dir/partyline-initialized" 2>/dev/null || true
  fi
  launch "$name" redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" "${persist[@]}" \
    --daemonize no --protected-mode yes --loglevel notice "$@"
  wait_for "$name" "answering PING" sh -c "redis-cli -h 127.0.0.1 -p $port ping | grep -q PONG"
}

cluster_ok() { # every primary says the cluster is ok
  local p
  for p in "${REDIS_PORTS[@]}"; do
    redis-cli -h 127.0.0.1 -p "$p" cluster info | grep -q '^cluster_state:ok' || return 1
  done
}

# A Redis Cluster of three primaries. Its configuration (nodes.conf) stays in each node's
# directory with the data, so a durable cluster comes back by itself after `down` and `up`; an
# empty one is created with redis-cli --cluster create.
start_redis_cluster() {
  local i
  for i in "${!REDIS_PORTS[@]}"; do
    start_redis "redis-$((i + 1))" "${REDIS_PORTS[$i]}" "$DIR/redis-$((i + 1))" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000
  done
  local assigned
  assigned="$(redis-cli -h 127.0.0.1 -p "${REDIS_PORTS[0]}" cluster info | sed -n 's/^cluster_slots_assigned:\([0-9]*\).*/\1/p')"
  if [ "${assigned:-0}" = 0 ]; then
    say "creating the Redis Cluster (redis-cli --cluster create, a few seconds)"
    local seeds=()
    for i in "${REDIS_PORTS[@]}"; do seeds+=("127.0.0.1:$i"); done
    redis-cli --cluster create "${seeds[@]}" --cluster-replicas 0 --cluster-yes >"$LOGS/redis-cluster-create.log" 2>&1 ||
      { tail -n 20 "$LOGS/redis-cluster-create.log" >&2; fail_up "redis-cli --cluster create failed"; }
  fi
  wait_for redis-1 "the Redis Cluster to be ok on every primary" cluster_ok
}

print_where() {
  local i
  if [ "$REDIS_MODE" = cluster ]; then
    for i in "${!REDIS_PORTS[@]}"; do
      say "  redis-$((i + 1))   127.0.0.1:${REDIS_PORTS[$i]}   (redis-cli -c -p ${REDIS_PORTS[$i]}; key prefix $PREFIX)"
    done
  else
    say "  redis     127.0.0.1:$REDIS_PORT   (redis-cli -p $REDIS_PORT; key prefix $PREFIX)"
  fi
  for i in "${!NODE_PORTS[@]}"; do
    say "  node-$((i + 1))    127.0.0.1:${NODE_PORTS[$i]}   gRPC"
  done
  for i in "${!GATEWAY_PORTS[@]}"; do
    say "  gateway-$((i + 1)) http://127.0.0.1:${GATEWAY_PORTS[$i]}/   (ws://127.0.0.1:${GATEWAY_PORTS[$i]}/parties/<party>/<room>)"
  done
  if [ -n "${CLUSTER_CONSOLE_PORT:-}" ]; then
    say "  console   http://127.0.0.1:$CLUSTER_CONSOLE_PORT/console/   (any user name; password: cat $DIR/console-token)"
  fi
  say "  logs      $LOGS/<name>.log   (scripts/cluster.sh logs)"
  say "  secret    ${PARTYLINE_CLUSTER_SECRET:+from PARTYLINE_CLUSTER_SECRET}${PARTYLINE_CLUSTER_SECRET:-$DIR/secret}"
  say "  stop      scripts/cluster.sh down"
}

# ---- down

# stop_all [quiet]: TERM every recorded process that is still ours (gateways first, Redis
# last), wait, KILL what remains, remove the pid files.
stop_all() {
  local quiet="${1:-}" n pid
  local order=()
  mapfile -t order < <(recorded | tac)
  local waiting=()
  for n in "${order[@]}"; do
    if alive "$n"; then
      pid="$(pid_of "$n")"
      kill -TERM "$pid" 2>/dev/null || true
      waiting+=("$n")
      [ -n "$quiet" ] || say "stopping $n (pid $pid)"
    else
      [ -n "$quiet" ] || say "$n was not running"
    fi
  done
  local deadline=$((SECONDS + 10)) left
  while :; do
    left=()
    for n in "${waiting[@]}"; do alive "$n" && left+=("$n"); done
    [ "${#left[@]}" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for n in "${left[@]}"; do
        say "$n did not stop within 10s: killing it"
        kill -KILL "$(pid_of "$n")" 2>/dev/null || true
      done
      sleep 0.2
      break
    fi
    sleep 0.1
  done
  for n in "${order[@]}"; do rm -f "$PIDS/$n.pid"; done
}

cmd_down() {
  if [ -z "$(recorded 2>/dev/null)" ]; then
    say "the cluster is not up (no pid files in $PIDS)"
    return 0
  fi
  stop_all
  say "the cluster is down (logs stay in $LOGS)"
}

# ---- status

cmd_status() {
  local n any=0
  if [ -z "$(recorded 2>/dev/null)" ]; then
    say "the cluster is not up (no pid files in $PIDS)"
    return 0
  fi
  say "processes:"
  for n in $(recorded); do
    if alive "$n"; then
      printf '  %-10s pid %-8s alive   RSS %s\n' "$n" "$(pid_of "$n")" "$(awk '/VmRSS/ {print $2 " " $3}' "/proc/$(pid_of "$n")/status" 2>/dev/null)"
      any=1
    else
      printf '  %-10s pid %-8s DEAD    (log: %s)\n' "$n" "$(pid_of "$n")" "$LOGS/$n.log"
    fi
  done
  alive "$(redis_names | head -n 1)" || { say "redis is not running: no membership to show"; return 0; }
  say ""
  local sec
  sec="$(secret 2>/dev/null || true)"
  if [ -x "$BIN" ] && "$BIN" status --help >/dev/null 2>&1; then
    PARTYLINE_REDIS_URL="$REDIS_URL" PARTYLINE_REDIS_PREFIX="$PREFIX" PARTYLINE_CLUSTER_SECRET="$sec" "$BIN" status "$@" && return 0
    say "(partyline status failed; reading Redis directly)"
  fi
  say "members ($MEMBERS_KEY):"
  local id
  for id in $(redis_cli SMEMBERS "$MEMBERS_KEY"); do
    printf '  %-10s %s\n' "$id" "$(redis_cli GET "$NODE_KEY$id")"
  done
  [ "$any" = 1 ] || true
}

cmd_logs() {
  local n
  if [ $# -gt 0 ]; then
    tail -n 50 "$LOGS/$1.log"
    return
  fi
  for n in $(names); do
    [ -f "$LOGS/$n.log" ] || continue
    printf '==> %s <==\n' "$LOGS/$n.log"
    tail -n 10 "$LOGS/$n.log"
  done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) shift; cmd_status "$@" ;;
  logs) shift; cmd_logs "$@" ;;
  -h | --help | help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) printf 'usage: scripts/cluster.sh up|down|status|logs (try --help)\n' >&2; exit 2 ;;
esac
