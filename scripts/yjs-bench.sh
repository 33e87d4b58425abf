#!/usr/bin/env bash
# Yjs benchmark: `partyline bench yjs` (every client a y-partykit provider editing one shared
# Y.Text; see `partyline bench --help`) against
#   dev        partyline dev, storage on disk (a fresh data directory)
#   cluster    redis-server + one partyline node + two gateways (providers spread over both)
#   partykit   the real PartyKit dev server (npm `partykit`, workerd) running y-partykit's
#              onConnect with persist: snapshot, as y-partykit's docs show (the same
#              semantics as Partyline's `yjs` party)
#   partykit-memory  the same server, y-partykit without persistence (its default)
# and for each: updates/s and latency with 50 providers in one document (as fast as each
# provider's previous update comes back, and at 10 updates/s per provider), and server memory
# per loaded document (a fresh server, 200 rooms, one provider each, 50 updates of 64
# characters per room).
#
#   scripts/yjs-bench.sh          every target, 3 runs each (~12 min on 2 cores)
#   options: --runs N  --only "dev cluster"  --out DIR  --no-build  --duration 10s
#
# Everything runs on 127.0.0.1, on ports this script picks (21000-31999), and is stopped when
# it ends (also on Ctrl-C). PartyKit needs its npm packages (pinned in scripts/yjs-bench/
# package.json); the script installs them into target/yjs-bench/partykit with `npm ci`, and
# skips the target with the reason if that or the server fails. Results: DIR/results.md, one
# JSON per tester run in DIR/runs/, server logs in DIR/logs/ (DIR defaults to
# target/yjs-bench/<date-time>).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUNS=3
ONLY="dev cluster partykit partykit-memory"
OUT=""
BUILD=1
DURATION=10s
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --duration) DURATION="$2"; shift ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "yjs-bench.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-$ROOT/target/yjs-bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT/runs" "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
BIN="$ROOT/target/release/partyline"
PK_DIR="$ROOT/target/yjs-bench/partykit"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ "$BUILD" = 1 ]; then
  log "building (cargo build --release --bin partyline)"
  cargo build --release --bin partyline >"$OUT/logs/build.log" 2>&1 || {
    tail -n 30 "$OUT/logs/build.log" >&2
    echo "yjs-bench.sh: the build failed" >&2
    exit 1
  }
fi
[ -x "$BIN" ] || { echo "yjs-bench.sh: missing $BIN (run without --no-build)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "yjs-bench.sh: python3 is needed for the summary" >&2; exit 1; }
command -v curl >/dev/null || { echo "yjs-bench.sh: curl is needed" >&2; exit 1; }

# ---- ports and processes

USED_PORTS=" "
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p=$((21000 + RANDOM % 11000))
  while port_busy "$p" || [[ "$USED_PORTS" == *" $p "* ]]; do p=$((21000 + RANDOM % 11000)); done
  USED_PORTS="$USED_PORTS$p "
  printf '%s\n' "$p"
}

CHILD_PIDS=()   # processes started here (PartyKit: process group leaders, see start_target)
CLUSTER_DIRS=()
stop_pid() {
  local pid="$1" i
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid d
  for pid in "${CHILD_PIDS[@]}"; do stop_pid "$pid"; done
  CHILD_PIDS=()
  for d in "${CLUSTER_DIRS[@]}"; do
    CLUSTER_DIR="$d" "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
  done
  CLUSTER_DIRS=()
}
trap cleanup EXIT
trap 'echo "yjs-bench.sh: interrupted" >&2; exit 130' INT TERM

wait_http() { # wait_http PORT PID NAME SECONDS
  local i
  for i in $(seq 1 $(($4 * 10))); do
    [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$1/")" != 000 ] && return 0
    kill -0 "$2" 2>/dev/null || { tail -n 20 "$OUT/logs/$3.log" >&2; return 1; }
    sleep 0.1
  done
  echo "yjs-bench.sh: $3 did not answer on :$1 within $4 s" >&2
  return 1
}

partykit_ready() {
  if [ ! -d "$PK_DIR/node_modules/partykit" ] ||
     [ "$ROOT/scripts/yjs-bench/package-lock.json" -nt "$PK_DIR/node_modules/.package-lock.json" ]; then
    mkdir -p "$PK_DIR/src"
    cp "$ROOT/scripts/yjs-bench/package.json" "$ROOT/scripts/yjs-bench/package-lock.json" "$PK_DIR/"
    log "installing PartyKit (npm ci in $PK_DIR)"
    (cd "$PK_DIR" && npm ci --no-audit --no-fund --loglevel=error) >"$OUT/logs/partykit-npm.log" 2>&1 || return 1
  fi
  cp "$ROOT/scripts/yjs-bench/server.ts" "$ROOT/scripts/yjs-bench/server-memory.ts" "$PK_DIR/src/"
  cp "$ROOT/scripts/yjs-bench/partykit.json" "$PK_DIR/partykit.json"
}

# Set by start_target: URLS (tester --url args), PIDS (--server-pid args; the first EDGE of
# them hold the client sockets and the documents: their RSS growth is the memory figure),
# PARTY.
start_target() {
  local name="$1" p np rp g1 g2
  URLS=(); PIDS=(); EDGE=1; PARTY=yjs
  case "$name" in
    dev)
      p="$(pick_port)"
      "$BIN" dev --data-dir "$OUT/dev-data" --host 127.0.0.1 --port "$p" >"$OUT/logs/dev.log" 2>&1 &
      CHILD_PIDS+=($!); PIDS=($!)
      wait_http "$p" $! dev 15 || return 1
      URLS=("ws://127.0.0.1:$p")
      ;;
    cluster)
      np="$(pick_port)"; rp="$(pick_port)"; g1="$(pick_port)"; g2="$(pick_port)"
      CLUSTER_DIRS+=("$OUT/cluster")
      CLUSTER_DIR="$OUT/cluster" CLUSTER_REDIS_PORT="$rp" CLUSTER_NODE_PORTS="$np" CLUSTER_GATEWAY_PORTS="$g1 $g2" \
        PARTYLINE_BIN="$BIN" PARTYLINE_LEASE_PROFILE=standard CLUSTER_NO_BUILD=1 \
        "$ROOT/scripts/cluster.sh" up >"$OUT/logs/cluster-up.log" 2>&1 || {
        cat "$OUT/logs/cluster-up.log" >&2
        return 1
      }
      URLS=("ws://127.0.0.1:$g1" "ws://127.0.0.1:$g2")
      # The node holds the documents; the gateways hold the sockets.
      PIDS=("$(cut -d' ' -f1 "$OUT/cluster/pids/node-1.pid")"
            "$(cut -d' ' -f1 "$OUT/cluster/pids/gateway-1.pid")"
            "$(cut -d' ' -f1 "$OUT/cluster/pids/gateway-2.pid")"
            "$(cut -d' ' -f1 "$OUT/cluster/pids/redis.pid")")
      EDGE=3
      ;;
    partykit | partykit-memory)
      [ "$name" = partykit-memory ] && PARTY=yjsmem
      partykit_ready || { echo "$name: npm ci failed (log: $OUT/logs/partykit-npm.log)" >"$OUT/skipped.$name"; return 1; }
      p="$(pick_port)"
      rm -rf "$PK_DIR/.partykit"
      # Its own process group, so stopping it stops the workerd it starts.
      (cd "$PK_DIR" && exec setsid ./node_modules/.bin/partykit dev --port "$p") >"$OUT/logs/$name.log" 2>&1 &
      CHILD_PIDS+=($!)
      wait_http "$p" $! "$name" 60 || {
        echo "$name: the dev server did not start: $(tail -n 5 "$OUT/logs/$name.log" | tr '\n' ' ')" >"$OUT/skipped.$name"
        return 1
      }
      local w
      w="$(ps -o pid=,comm= --sid "$!" | awk '$2 == "workerd" {print $1; exit}')"
      [ -n "$w" ] || { echo "$name: no workerd process found" >"$OUT/skipped.$name"; return 1; }
      URLS=("ws://127.0.0.1:$p"); PIDS=("$w" "$!")
      ;;
    *) echo "yjs-bench.sh: unknown target $name" >&2; exit 2 ;;
  esac
  printf '%s\n' "$EDGE" >"$OUT/edge.$name"
}

FAILED=0
tester() { # tester TARGET NAME RUN [ARGS...]
  local target="$1" scen="$2" run="$3"; shift 3
  local json="$OUT/runs/$target.$scen.$run.json" u urlargs=() pidargs=() p
  for u in "${URLS[@]}"; do urlargs+=(--url "$u"); done
  for p in "${PIDS[@]}"; do pidargs+=(--server-pid "$p"); done
  if ! "$BIN" bench yjs --party "$PARTY" "$@" "${urlargs[@]}" "${pidargs[@]}" --quiet --label "$target" --json "$json" \
    >"$OUT/runs/$target.$scen.$run.txt" 2>&1; then
    FAILED=$((FAILED + 1))
    log "  $scen run $run FAILED: $(tail -n 1 "$OUT/runs/$target.$scen.$run.txt")"
    return 0
  fi
  log "  $scen run $run: $(python3 - "$json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); m = r["messages"]
print(f"{m['sent_per_s']:.0f} updates/s, {m['delivered_per_s']:.0f} deliveries/s, p99 {m['latency_ms']['p99']:.2f} ms, "
      f"lost {m['lost']}, errors {sum(r['errors'].values())}")
EOF
)"
}

COMMON=(--clients 50 --rooms 1 --size 64 --warmup 2s --duration "$DURATION" --drain 10s)
for run in $(seq 1 "$RUNS"); do
  for target in $ONLY; do
    [ -f "$OUT/skipped.$target" ] && continue
    log "== $target, run $run of $RUNS (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    printf '%s %s %s\n' "$target" "$run" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/loadavg"
    if ! start_target "$target"; then
      [ -f "$OUT/skipped.$target" ] || echo "$target: could not start (see $OUT/logs)" >"$OUT/skipped.$target"
      log "  skipped: $(cat "$OUT/skipped.$target")"
      cleanup
      continue
    fi
    sleep 1
    tester "$target" max "$run" "${COMMON[@]}" --window 1
    tester "$target" rate10 "$run" "${COMMON[@]}" --rate 10
    cleanup
    # Memory on a fresh server, so memory freed by the runs above does not hide growth.
    start_target "$target" || { log "  could not restart $target"; cleanup; continue; }
    sleep 1
    tester "$target" docs "$run" --clients 200 --rooms 200 --size 64 --warmup 0s --duration 5s --rate 10 --drain 10s
    cleanup
  done
done

log "summary"
python3 - "$OUT" "$ONLY" "$RUNS" <<'EOF'
import glob, json, os, statistics, sys

out, only, runs = sys.argv[1], sys.argv[2].split(), sys.argv[3]

def load(t, s):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/runs/{t}.{s}.*.json"))]

def edge(r):
    n = int(open(f"{out}/edge.{r['label']}").read())
    return r["servers"][:n]

def doc_kib(r):
    grow = sum(s["end"]["rss_kib"] - s["before"]["rss_kib"] for s in edge(r))
    return grow / r["params"]["rooms"]

def lat(q):
    # A run in which no measured update arrived within the drain has no latency to show.
    return lambda r: r["messages"]["latency_ms"][q] if r["messages"]["latency_ms"]["count"] else None

def delivered_pct(r):
    m = r["messages"]
    return 100.0 * m["delivered"] / m["expected"] if m["expected"] else None

FIGS = [
    ("max", "updates/s, 50 providers, each sending when its previous update is back", lambda r: r["messages"]["sent_per_s"]),
    ("max", "deliveries/s (updates x 50)", lambda r: r["messages"]["delivered_per_s"]),
    ("max", "p50 update latency to every provider, ms", lat("p50")),
    ("max", "p99 update latency to every provider, ms", lat("p99")),
    ("rate10", "at 10 updates/s per provider (500/s offered): updates/s sent", lambda r: r["messages"]["sent_per_s"]),
    ("rate10", "at 500 updates/s: deliveries within the run + 10 s, % of expected", delivered_pct),
    ("rate10", "at 500 updates/s: p50 latency, ms", lat("p50")),
    ("rate10", "at 500 updates/s: p99 latency, ms", lat("p99")),
    ("rate10", "at 500 updates/s: server CPU, % of a core", lambda r: sum(s["cpu_pct"] or 0 for s in r["servers"])),
    ("docs", "server memory per loaded document (200 rooms, 1 provider each), KiB", doc_kib),
    (None, "updates lost (not delivered within the drain) + duplicated + reordered, all runs", None),
    (None, "errors, all runs", None),
]

rows = []
for key, label, get in FIGS:
    cells = []
    for t in only:
        if os.path.exists(f"{out}/skipped.{t}") and not load(t, "max"):
            cells.append("skipped")
            continue
        if key is None:
            rs = [r for s in ("max", "rate10", "docs") for r in load(t, s)]
            if label.startswith("updates lost"):
                v = sum(r["messages"]["lost"] + r["messages"]["duplicates"] + r["messages"]["out_of_order"] for r in rs)
            else:
                v = sum(sum(r["errors"].values()) for r in rs)
            cells.append(str(v))
            continue
        vals = []
        for r in load(t, key):
            try:
                v = get(r)
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            if v is not None:
                vals.append(float(v))
        if not vals:
            cells.append("-")
        else:
            med = statistics.median(vals)
            fmt = (lambda v: f"{v:,.0f}") if med >= 100 else (lambda v: f"{v:.2f}")
            cells.append(fmt(med) + (f" ({fmt(min(vals))}-{fmt(max(vals))})" if len(vals) > 1 else ""))
    rows.append((label, cells))

md = [f"Median of {runs} run(s) (min-max in parentheses). Every update inserts 64 characters."]
if os.path.exists(f"{out}/loadavg"):
    loads = [float(l.split()[2]) for l in open(f"{out}/loadavg")]
    md.append(f"1-minute load average when each server started: {min(loads):.1f} to {max(loads):.1f} (2 cores).")
md.append("")
md.append("| figure | " + " | ".join(only) + " |")
md.append("|---|" + "---|" * len(only))
for label, cells in rows:
    md.append(f"| {label} | " + " | ".join(cells) + " |")
for t in only:
    if os.path.exists(f"{out}/skipped.{t}"):
        md.append("")
        md.append(f"{t}: {open(f'{out}/skipped.{t}').read().strip()}")
open(f"{out}/results.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
log "results: $OUT/results.md"
[ "$FAILED" = 0 ] || { echo "yjs-bench.sh: $FAILED tester run(s) failed" >&2; exit 1; }
