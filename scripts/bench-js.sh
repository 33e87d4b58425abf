#!/usr/bin/env bash
# JS parties on Partyline vs the same files on the real PartyKit dev server vs Rust parties.
#
#   scripts/bench-js.sh            build (release), run every target, print the table
#
# The server runs on one core (taskset -c $SERVER_CORE, --worker-threads 1), the load tester on
# the other. Targets, all with the load tester's fanout scenario (every member receives every
# message; --window in flight per sender):
#   rust-main / rust-broadcast   partyline dev with the Rust example parties
#   js-main / js-relay           partyline dev serving examples/partykit (log.ts, a chat
#                                without framing: store then broadcast; relay: broadcast only)
#   partykit-main / -relay       `partykit dev` (npm partykit, installed in bench/partykit) on the
#                                same examples/partykit files
# plus the cold start of small JS rooms (one client per new room: connect to 101), the memory
# per idle loaded JS room (one connection per room, server RSS), and the start of `partyline dev`
# in a bundled project with a React client (tests/partykit-projects/react-page): from spawning
# the process to the first 200 answered on `/`, cold (the build cache .partyline/cache removed)
# and cached (the run after), the median of DEV_RUNS each. The goals, each printed with PASS or
# FAIL: dev start <= 1 s cached and <= 3 s cold; JS room cold start p50 <= 10 ms; idle memory
# <= 150 KiB per loaded JS room; js-main >= 10x partykit-main.
# Environment: CLIENTS (100), DURATION (10s), WINDOW (8), ROOMS_COLD (200), ROOMS_IDLE (1000),
# DEV_RUNS (3), DEV_PROJECT (tests/partykit-projects/react-page), PORT (2600), SERVER_CORE (0),
# TESTER_CORE (1), OUT (target/bench-js), ONLY (all; or a space-separated subset of rust js
# partykit devstart).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CLIENTS="${CLIENTS:-100}"; DURATION="${DURATION:-10s}"; WINDOW="${WINDOW:-8}"
ROOMS_COLD="${ROOMS_COLD:-200}"; ROOMS_IDLE="${ROOMS_IDLE:-1000}"
PORT="${PORT:-2600}"; SERVER_CORE="${SERVER_CORE:-0}"; TESTER_CORE="${TESTER_CORE:-1}"
OUT="${OUT:-$ROOT/target/bench-js}"
DEV_RUNS="${DEV_RUNS:-3}"; DEV_PROJECT="${DEV_PROJECT:-$ROOT/tests/partykit-projects/react-page}"
ONLY="${ONLY:-rust js partykit devstart}"
want() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
mkdir -p "$OUT"
cargo build --release --bin partyline
cargo build --release -p partyline-bench
BIN="$ROOT/target/release/partyline"
TESTER=(taskset -c "$TESTER_CORE" "$ROOT/target/release/partyline-bench")
[ -d examples/partykit/node_modules ] || (cd examples/partykit && npm ci --no-audit --no-fund --loglevel=error)

PID=""
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench-js: the server did not listen on $PORT" >&2; return 1
}
# The PartyKit dev server runs in its own process group (setsid): stopping it stops the workerd
# and esbuild it starts; for the other servers the group kill fails and the process is killed.
stop() {
  if [ -n "$PID" ]; then
    kill -- "-$PID" 2>/dev/null || kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
trap stop EXIT

fanout() { # label party [extra tester args...]
  local label="$1" party="$2"; shift 2
  "${TESTER[@]}" fanout --url "ws://127.0.0.1:$PORT" --clients "$CLIENTS" --party "$party" \
    --rate 0 --window "$WINDOW" --duration "$DURATION" --room-prefix "$label-" --quiet \
    --json "$OUT/$label.json" "$@" || echo "bench-js: $label failed" >&2
}

# Rust parties.
if want rust; then
EMPTY="$(mktemp -d)"
(cd "$EMPTY" && exec taskset -c "$SERVER_CORE" "$BIN" dev --ephemeral --worker-threads 1 --port "$PORT") >"$OUT/rust.log" 2>&1 &
PID=$!; wait_port
fanout rust-main main
fanout rust-broadcast broadcast
stop
rmdir "$EMPTY" 2>/dev/null || true
fi

# JS parties (examples/partykit).
if want js; then
(cd examples/partykit && exec taskset -c "$SERVER_CORE" "$BIN" dev --ephemeral --worker-threads 1 --port "$PORT") >"$OUT/js.log" 2>&1 &
PID=$!; wait_port
fanout js-main log
fanout js-relay relay
"${TESTER[@]}" fanout --url "ws://127.0.0.1:$PORT" --clients "$ROOMS_COLD" --rooms "$ROOMS_COLD" --party relay \
  --rate 1 --duration 2s --connect-concurrency 1 --room-prefix cold- --quiet --json "$OUT/js-cold.json" || true
"${TESTER[@]}" idle --url "ws://127.0.0.1:$PORT" --clients "$ROOMS_IDLE" --rooms "$ROOMS_IDLE" --party relay \
  --duration 5s --room-prefix idle- --server-pid "$PID" --quiet --json "$OUT/js-idle.json" || true
stop
fi

# `partyline dev` start in a bundled project with a React client: spawn to the first 200 on `/`.
dev_start() { # cold|cached: prints the milliseconds, or "fail"
  local t0 t1 deadline
  [ "$1" = cold ] && rm -rf "$DEV_PROJECT/.partyline/cache"
  t0=$(date +%s%N); deadline=$((t0 + 60000000000))
  (cd "$DEV_PROJECT" && exec taskset -c "$SERVER_CORE" "$BIN" dev --ephemeral --worker-threads 1 --port "$PORT") \
    >>"$OUT/devstart.log" 2>&1 &
  PID=$!
  until curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:$PORT/"; do
    if [ "$(date +%s%N)" -gt "$deadline" ] || ! kill -0 "$PID" 2>/dev/null; then stop; echo fail; return; fi
    sleep 0.005
  done
  t1=$(date +%s%N)
  stop
  echo $(((t1 - t0) / 1000000))
}
if want devstart; then
  [ -d "$DEV_PROJECT/../node_modules" ] || [ -d "$DEV_PROJECT/node_modules" ] ||
    (cd "$DEV_PROJECT/.." && npm ci --no-audit --no-fund --loglevel=error)
  : >"$OUT/devstart.log"
  COLD=(); CACHED=()
  for _ in $(seq 1 "$DEV_RUNS"); do
    COLD+=("$(dev_start cold)")
    CACHED+=("$(dev_start cached)")
  done
  printf '{"cold_ms": [%s], "cached_ms": [%s]}\n' "$(IFS=,; echo "${COLD[*]//fail/null}")" \
    "$(IFS=,; echo "${CACHED[*]//fail/null}")" >"$OUT/devstart.json"
fi

# The same files on the real PartyKit dev server.
if want partykit; then
if [ ! -d bench/partykit/node_modules/partykit ]; then
  (cd bench/partykit && npm install --no-audit --no-fund --loglevel=error) || true
fi
if [ -x bench/partykit/node_modules/.bin/partykit ]; then
  # Its own process group, so stopping it stops the workerd and esbuild it starts.
  (cd examples/partykit && exec setsid taskset -c "$SERVER_CORE" "$ROOT/bench/partykit/node_modules/.bin/partykit" dev --port "$PORT") >"$OUT/partykit.log" 2>&1 &
  PID=$!
  if wait_port; then
    fanout partykit-main log
    fanout partykit-relay relay
  else
    echo "bench-js: partykit dev did not start; its log:" >&2; tail -20 "$OUT/partykit.log" >&2
  fi
  stop
else
  echo "bench-js: npm partykit is not installed (bench/partykit); skipping PartyKit" >&2
fi
fi

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(n):
    p = os.path.join(out, n + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
def get(d, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d: return None
        d = d[k]
    return d
rows = {}
print(f"{'target':<18} {'deliveries/s':>13} {'msgs/s':>9} {'p99 ms':>8} {'lost':>6}")
for n in ["rust-main", "rust-broadcast", "js-main", "js-relay", "partykit-main", "partykit-relay"]:
    r = load(n)
    if not r: print(f"{n:<18} {'(not run)':>13}"); continue
    m = r["messages"]
    rows[n] = m["delivered_per_s"]
    lost = m.get("lost")
    print(f"{n:<18} {m['delivered_per_s']:>13.0f} {m['sent_per_s']:>9.0f} {m['latency_ms']['p99']:>8.2f} {lost if lost is not None else '?':>6}")
def ratio(a, b):
    return rows[a] / rows[b] if a in rows and b in rows and rows[b] else None
goals = []
def goal(name, value, unit, ok, bound):
    shown = "n/a" if value is None else (f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}")
    verdict = "n/a" if value is None else ("PASS" if ok(value) else "FAIL")
    goals.append(f"{verdict:<5} {name:<44} {shown:>12}  (goal {bound})")
r = ratio('js-relay', 'rust-broadcast')
print(f"js-relay / rust-broadcast: {'n/a' if r is None else f'{r:.2f}'} (target >= 0.5)")
dev = load("devstart")
def median(xs):
    xs = sorted(x for x in xs or [] if x is not None)
    return xs[len(xs) // 2] if xs else None
if dev:
    print(f"partyline dev start, react-page (spawn to first 200 on /): cold {dev['cold_ms']} ms, cached {dev['cached_ms']} ms")
    goal("(a) dev start, bundle cached (median)", median(dev["cached_ms"]), " ms", lambda v: v <= 1000, "<= 1000 ms")
    goal("(a) dev start, cold (median)", median(dev["cold_ms"]), " ms", lambda v: v <= 3000, "<= 3000 ms")
cold = load("js-cold")
if cold:
    q = cold["connections"]["connect_ms"]
    print(f"JS room cold start (connect to 101, one client per new room): p50 {q.get('p50')} ms, p99 {q.get('p99')} ms")
    goal("(b) JS room cold start p50", q.get("p50"), " ms", lambda v: v <= 10, "<= 10 ms")
idle = load("js-idle")
if idle:
    for srv in idle.get("servers") or []:
        per = srv.get("per_connection_kib")
        print(f"idle JS rooms ({idle['idle']['held']}, one connection each): server RSS "
              f"{srv['before']['rss_kib']} -> {srv['connected']['rss_kib']} KiB, "
              f"{'?' if per is None else f'{per:.0f}'} KiB per loaded room")
        goal("(c) idle memory per loaded JS room", None if per is None else float(per), " KiB", lambda v: v <= 150, "<= 150 KiB")
goal("(d) js-main / partykit-main", ratio('js-main', 'partykit-main'), "x", lambda v: v >= 10, ">= 10x")
print("goals:")
for g in goals: print("  " + g)
PY
