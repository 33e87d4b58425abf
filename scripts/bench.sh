#!/usr/bin/env bash
# Benchmarks: the same scenarios, with the same load tester and parameters, against
#   baseline     the bare tokio-tungstenite broadcast server (partyline-baseline)
#   dev          partyline dev --ephemeral
#   cluster-1gw  redis-server + one partyline node + one partyline gateway
#   cluster-2gw  the same with two gateways (clients spread over both)
# and a table of each figure's min/median/max over the runs and its ratio to the baseline.
#
#   scripts/bench.sh                 the full run (~12 min on 2 cores): 3 runs of each scenario,
#                                    one 19,000-connection idle run per server with a 60 s hold
#   scripts/bench.sh --quick         a ~2 min sanity run: 1 run, short durations, 2,000 idle
#   scripts/bench.sh --echo          only the echo comparison below (~4 min, plus one build of
#                                    the previous release the first time)
#   scripts/bench.sh --fanout        only the fan-out saturation sweep below (~6 min)
#   options: --runs N  --idle-runs N  --only "dev cluster-1gw"  --out DIR  --no-build
#            --summarize DIR   only rebuild DIR/results.{md,json} from the runs already in DIR
#            --no-echo         skip the echo comparison
#            --no-fanout       skip the fan-out saturation sweep
#            --previous REF    the previous release to compare with: a git ref (built once into
#                              target/bench/previous/<commit>) or a partyline binary [default:
#                              the newest v* tag below HEAD, else the commit in scripts/bench-previous]
#
# The echo comparison (issue 19): the echo party, 50 clients, one message in flight each, the
# server processes pinned to core 0 and the load tester to core 1, against
#   partykit          the real PartyKit dev server (npm partykit, bench/partykit) serving the same
#                     echo party in TypeScript (bench/partykit/echo)
#   baseline          the bare tokio-tungstenite server's echo path: what one core does with no
#                     party at all, so the ceiling of this machine's measurement (printed with
#                     the server's and the load tester's CPU)
#   dev, cluster      this checkout: partyline dev; Redis + one node + one gateway
#   previous-dev, previous-cluster   the same with the previous release's binary
# with the goals: dev >= 3x partykit, cluster >= 2x partykit, and each against the previous release.
#
# The fan-out saturation sweep (issue 19): one room, 100 clients, 10 senders at fixed rates, the
# offered deliveries per second rising (SWEEP_OFFERED, default 3 M to 7 M), against the baseline,
# dev and cluster-1gw, pinned as the echo comparison (server processes on core 0, the tester on
# core 1); the goal: at the baseline's saturation point (its most deliveries/s), the cluster
# delivers >= 90 % of the baseline with p99 <= 2x the baseline's.
#
# Everything runs on 127.0.0.1, on ports this script picks (21000-31999), and is stopped when
# it ends (also on Ctrl-C). Results: DIR/results.json, DIR/results.md, one JSON per tester run
# in DIR/runs/, server logs in DIR/logs/ (DIR defaults to target/bench/<date-time>).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK=0
RUNS=""
IDLE_RUNS=""
ONLY="baseline dev cluster-1gw cluster-2gw"
OUT=""
BUILD=1
SUMMARIZE=0
ECHO=1
FANOUT=1
ECHO_ONLY=0
PREVIOUS="${PARTYLINE_BENCH_PREVIOUS:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --runs) RUNS="$2"; shift ;;
    --idle-runs) IDLE_RUNS="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --summarize) SUMMARIZE=1; OUT="$2"; BUILD=0; shift ;;
    --echo) ECHO_ONLY=1; FANOUT=0 ;;
    --fanout) ECHO_ONLY=1; ECHO=0 ;;
    --no-fanout) FANOUT=0 ;;
    --no-echo) ECHO=0 ;;
    --previous) PREVIOUS="$2"; shift ;;
    -h | --help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  RUNS="${RUNS:-1}"; IDLE_RUNS="${IDLE_RUNS:-1}"
  WARMUP=1s; DURATION=2s; IDLE_CLIENTS=2000; IDLE_HOLD=5s
else
  RUNS="${RUNS:-3}"; IDLE_RUNS="${IDLE_RUNS:-1}"
  WARMUP=1s; DURATION=4s; IDLE_CLIENTS=19000; IDLE_HOLD=60s
fi
OUT="${OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT/runs" "$OUT/logs" "$OUT/metrics"
OUT="$(cd "$OUT" && pwd)"

if [ "$SUMMARIZE" = 1 ]; then
  [ -d "$OUT/runs" ] || { echo "bench.sh: no runs in $OUT" >&2; exit 1; }
  ONLY="$(ls "$OUT/runs" | sed -n 's/\.fanout-sat\..*//p' | sort -u | tr '\n' ' ')"
  for t in baseline dev cluster-1gw cluster-2gw; do # keep the usual order
    [[ " $ONLY " == *" $t "* ]] && ORDERED="${ORDERED:-} $t"
  done
  ONLY="${ORDERED:-$ONLY}"
fi

# The parameters every server gets (issue 4: 64-byte messages, 100 clients in one room).
CLIENTS=100
SIZE=64
WINDOW=8

BIN="$ROOT/target/release/partyline"
TESTER="$ROOT/target/release/partyline-bench"
BASELINE="$ROOT/target/release/partyline-baseline"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ "$BUILD" = 1 ]; then
  log "building (cargo build --release: partyline, partyline-bench, partyline-baseline)"
  cargo build --release --bin partyline >"$OUT/logs/build.log" 2>&1 &&
    cargo build --release -p partyline-bench >>"$OUT/logs/build.log" 2>&1 || {
    tail -n 30 "$OUT/logs/build.log" >&2
    echo "bench.sh: the build failed (log: $OUT/logs/build.log)" >&2
    exit 1
  }
fi
for b in "$BIN" "$TESTER" "$BASELINE"; do
  [ -x "$b" ] || { echo "bench.sh: missing $b (run without --no-build)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "bench.sh: python3 is needed for the summary" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench.sh: curl is needed" >&2; exit 1; }

# ---- ports and processes

USED_PORTS=" "
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() { # below Linux's ephemeral range (32768-60999), so the tester's own ports never collide
  local p=$((21000 + RANDOM % 11000))
  while port_busy "$p" || [[ "$USED_PORTS" == *" $p "* ]]; do p=$((21000 + RANDOM % 11000)); done
  USED_PORTS="$USED_PORTS$p "
  printf '%s\n' "$p"
}

CHILD_PIDS=()
CLUSTER_DIRS=()
# stop_pid PID: TERM, then KILL after 10 s; a child started with setsid (PartyKit's dev server,
# which starts workerd and esbuild) is stopped with its whole process group.
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
trap 'echo "bench.sh: interrupted" >&2; exit 130' INT TERM

wait_http() { # wait_http PORT PID NAME
  local i
  for i in $(seq 1 150); do
    [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$1/_partyline/health")" != 000 ] && return 0
    kill -0 "$2" 2>/dev/null || { tail -n 20 "$OUT/logs/$3.log" >&2; echo "bench.sh: $3 exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench.sh: $3 did not answer on :$1 within 15 s" >&2
  exit 1
}

# Set by start_target: URLS (tester --url args), PIDS (--server-pid args: first the processes
# holding client sockets, then the cluster's node and Redis, for CPU), GATEWAY_PORTS (for
# /_partyline/metrics; empty for the baseline). $OUT/edge.<target> records how many of PIDS hold
# the client sockets (their RSS growth is the memory per connection).
start_target() {
  local name="$1" p np rp gp gps
  URLS=(); PIDS=(); GATEWAY_PORTS=()
  case "$name" in
    baseline)
      p="$(pick_port)"
      "$BASELINE" --port "$p" >"$OUT/logs/baseline.log" 2>&1 &
      CHILD_PIDS+=($!); PIDS=($!)
      wait_http "$p" $! baseline
      URLS=("ws://127.0.0.1:$p")
      ;;
    dev)
      p="$(pick_port)"
      "$BIN" dev --ephemeral --host 127.0.0.1 --port "$p" >"$OUT/logs/dev.log" 2>&1 &
      CHILD_PIDS+=($!); PIDS=($!)
      wait_http "$p" $! dev
      URLS=("ws://127.0.0.1:$p"); GATEWAY_PORTS=("$p")
      ;;
    cluster-1gw | cluster-2gw)
      np="$(pick_port)"; rp="$(pick_port)"
      gps="$(pick_port)"
      [ "$name" = cluster-2gw ] && gps="$gps $(pick_port)"
      CLUSTER_DIRS+=("$OUT/$name")
      CLUSTER_DIR="$OUT/$name" CLUSTER_REDIS_PORT="$rp" CLUSTER_NODE_PORTS="$np" CLUSTER_GATEWAY_PORTS="$gps" \
        PARTYLINE_BIN="$BIN" PARTYLINE_LEASE_PROFILE=standard CLUSTER_NO_BUILD=1 \
        "$ROOT/scripts/cluster.sh" up >"$OUT/logs/$name-up.log" 2>&1 || {
        cat "$OUT/logs/$name-up.log" >&2
        echo "bench.sh: could not start $name" >&2
        exit 1
      }
      local i=1
      for gp in $gps; do
        URLS+=("ws://127.0.0.1:$gp"); GATEWAY_PORTS+=("$gp")
        PIDS+=("$(cut -d' ' -f1 "$OUT/$name/pids/gateway-$i.pid")")
        i=$((i + 1))
      done
      PIDS+=("$(cut -d' ' -f1 "$OUT/$name/pids/node-1.pid")" "$(cut -d' ' -f1 "$OUT/$name/pids/redis.pid")")
      ;;
    *) echo "bench.sh: unknown target $name" >&2; exit 2 ;;
  esac
  printf '%s\n' "${#URLS[@]}" >"$OUT/edge.$name"
}

stop_target() {
  cleanup
}

scrape() { # scrape FILE: every gateway's broadcast counters
  local gp
  : >"$1"
  for gp in "${GATEWAY_PORTS[@]}"; do
    curl -s -m 2 "http://127.0.0.1:$gp/_partyline/metrics" | grep -E '^partyline_gateway_(room_broadcasts|frames_to_clients|frames_from_clients)_total ' |
      sed "s/^/$gp /" >>"$1" || true
  done
}

# tester NAME SCENARIO RUN [ARGS...]: one run of the load tester, its JSON in runs/ (pinned to
# a core when TESTER_PIN holds a taskset command).
FAILED=0
TESTER_PIN=()
tester() {
  local target="$1" scen="$2" run="$3"; shift 3
  local json="$OUT/runs/$target.$scen.$run.json" u urlargs=() pidargs=() p
  for u in "${URLS[@]}"; do urlargs+=(--url "$u"); done
  for p in "${PIDS[@]}"; do pidargs+=(--server-pid "$p"); done
  if ! "${TESTER_PIN[@]}" "$TESTER" "$@" "${urlargs[@]}" "${pidargs[@]}" --quiet --label "$target" --json "$json" \
    >"$OUT/runs/$target.$scen.$run.txt" 2>&1; then
    FAILED=$((FAILED + 1))
    log "  $scen run $run FAILED: $(tail -n 1 "$OUT/runs/$target.$scen.$run.txt")"
    return 0
  fi
  log "  $scen run $run: $(python3 - "$json" "$scen" "$(cat "$OUT/edge.$target")" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); s = sys.argv[2]; edge = r["servers"][:int(sys.argv[3])]
m, h, c, i = r.get("messages") or {}, r.get("http") or {}, r.get("churn") or {}, r.get("idle") or {}
err = sum(r["errors"].values())
if s.startswith(("fanout", "echo", "sweep")):
    print(f"{m['sent_per_s']:.0f} msg/s, {m['delivered_per_s']:.0f} deliveries/s, p99 {m['latency_ms']['p99']:.2f} ms, lost {m['lost']}, errors {err}")
elif s == "http":
    print(f"{h['per_s']:.0f} responses/s, p99 {h['latency_ms']['p99']:.2f} ms, errors {err}")
elif s == "churn":
    print(f"{c['cycles_per_s']:.0f} cycles/s, connect p99 {r['connections']['connect_ms']['p99']:.2f} ms, errors {err}")
elif s == "idle":
    kib = sum(x["per_connection_kib"] or 0 for x in edge)
    bc = i["broadcast_all_ms"]
    print(f"{i['alive_after_hold']}/{i['held']} alive, broadcast to all in "
          f"{'(not all)' if bc is None else f'{bc:.1f}'} ms, {kib:.2f} KiB/conn, errors {err}")
EOF
)"
}

COMMON=(--clients "$CLIENTS" --rooms 1 --size "$SIZE" --warmup "$WARMUP" --duration "$DURATION" --drain 5s)
RATE10=""

# Runs are interleaved (run 1 of every server, then run 2, ...) so that a passing disturbance
# (another process on the machine) spreads over the servers instead of hitting one of them.
[ "$SUMMARIZE" = 1 ] || [ "$ECHO_ONLY" = 1 ] && RUNS_TO_DO=0 || RUNS_TO_DO="$RUNS"
for run in $(seq 1 "$RUNS_TO_DO"); do
  for target in $ONLY; do
    log "== $target, run $run of $RUNS (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    printf '%s %s %s\n' "$target" "$run" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg"
    start_target "$target"
    sleep 1
    scrape "$OUT/metrics/$target.fanout-sat.$run.before"
    tester "$target" fanout-sat "$run" fanout "${COMMON[@]}" --window "$WINDOW"
    scrape "$OUT/metrics/$target.fanout-sat.$run.after"
    if [ -z "$RATE10" ]; then
      # 10 % of the first server's (the baseline's) saturation rate in run 1, split over the senders.
      RATE10="$(python3 - "$OUT/runs/$target.fanout-sat.$run.json" "$CLIENTS" <<'EOF2'
import json, sys
try:
    print(f"{0.1 * json.load(open(sys.argv[1]))['messages']['sent_per_s'] / int(sys.argv[2]):.3f}")
except Exception:
    print("")
EOF2
)"
      [ -n "$RATE10" ] || RATE10=20
      log "  fanout at 10% of $target's saturation: --rate $RATE10 per sender"
      printf '%s\n' "$RATE10" >"$OUT/rate10"
    fi
    tester "$target" fanout-10pct "$run" fanout "${COMMON[@]}" --rate "$RATE10"
    tester "$target" echo "$run" echo "${COMMON[@]}" --window 1
    tester "$target" http "$run" http --clients 16 --warmup "$WARMUP" --duration "$DURATION"
    tester "$target" churn "$run" churn --clients 50 --hold 50ms --warmup "$WARMUP" --duration "$DURATION"
    if [ "$run" -le "$IDLE_RUNS" ]; then
      tester "$target" idle "$run" idle --clients "$IDLE_CLIENTS" --size "$SIZE" --duration "$IDLE_HOLD" \
        --ramp 4000 --connect-timeout 20s --drain 10s
    fi
    stop_target
  done
done

[ "$ECHO_ONLY" = 1 ] || log "summary"
[ "$ECHO_ONLY" = 1 ] || python3 - "$OUT" "$ONLY" "$QUICK" "$RUNS" "$IDLE_CLIENTS" "$IDLE_HOLD" <<'EOF'
import glob, json, os, statistics, sys

out, only, quick, runs, idle_clients, idle_hold = sys.argv[1], sys.argv[2].split(), sys.argv[3] == "1", sys.argv[4], sys.argv[5], sys.argv[6]

def load(target, scen):
    rs = []
    for f in sorted(glob.glob(f"{out}/runs/{target}.{scen}.*.json")):
        try:
            rs.append(json.load(open(f)))
        except Exception:
            pass
    return rs

def errors(r):
    return sum(r["errors"].values())

def edge(r):
    # The server processes that hold the client sockets (gateways; dev and baseline: the one process).
    t = r["label"]
    n = int(open(f"{out}/edge.{t}").read()) if os.path.exists(f"{out}/edge.{t}") else len(r["servers"])
    return r["servers"][:n]

def server_cpu(r):
    vals = [s["cpu_pct"] for s in r["servers"] if s.get("cpu_pct") is not None]
    return sum(vals) if vals else None

def per_cpu_s(r):
    c = server_cpu(r)
    return r["messages"]["delivered_per_s"] / (c / 100.0) if c else None

def idle_kib(r):
    # Total RSS growth of the processes holding the sockets, per connection open at the end.
    grow = sum(s["end"]["rss_kib"] - s["before"]["rss_kib"] for s in edge(r))
    n = r["connections"]["open_at_end"]
    return grow / n if n else None

def broadcasts_per_msg(target, run):
    """Broadcasts that crossed into each gateway per message sent (1.0 = once per gateway)."""
    def read(path):
        d = {}
        if os.path.exists(path):
            for line in open(path):
                port, name, v = line.split()
                d[(port, name)] = float(v)
        return d
    b = read(f"{out}/metrics/{target}.fanout-sat.{run}.before")
    a = read(f"{out}/metrics/{target}.fanout-sat.{run}.after")
    f = f"{out}/runs/{target}.fanout-sat.{run}.json"
    if not a or not os.path.exists(f):
        return None
    r = json.load(open(f))
    sent = r["messages"]["sent"] + r["messages"]["warmup_sent"]
    ports = sorted({p for p, _ in a})
    vals = [(a[(p, "partyline_gateway_room_broadcasts_total")] - b.get((p, "partyline_gateway_room_broadcasts_total"), 0)) / sent for p in ports]
    return max(vals) if vals else None

# (key, scenario, label, unit, getter, higher_is_better)
FIGURES = [
    ("fanout_msgs", "fanout-sat", "fanout at saturation: messages/s", "msg/s", lambda r: r["messages"]["sent_per_s"], True),
    ("fanout_deliveries", "fanout-sat", "fanout at saturation: deliveries/s", "/s", lambda r: r["messages"]["delivered_per_s"], True),
    ("fanout_p99", "fanout-sat", "fanout at saturation: p99 latency", "ms", lambda r: r["messages"]["latency_ms"]["p99"], False),
    ("fanout_server_cpu", "fanout-sat", "fanout at saturation: server CPU, all processes (% of a core)", "%", server_cpu, False),
    ("fanout_tester_cpu", "fanout-sat", "fanout at saturation: load tester CPU (% of a core)", "%", lambda r: r["tester_cpu_pct"], False),
    ("fanout_per_cpu", "fanout-sat", "fanout at saturation: deliveries per server CPU-second", "/s", per_cpu_s, True),
    ("fanout_lost", "fanout-sat", "fanout at saturation: lost + dup + reordered", "", lambda r: r["messages"]["lost"] + r["messages"]["duplicates"] + r["messages"]["out_of_order"], False),
    ("fanout10_p50", "fanout-10pct", "fanout at 10% of baseline saturation: p50", "ms", lambda r: r["messages"]["latency_ms"]["p50"], False),
    ("fanout10_p99", "fanout-10pct", "fanout at 10% of baseline saturation: p99", "ms", lambda r: r["messages"]["latency_ms"]["p99"], False),
    ("fanout10_p999", "fanout-10pct", "fanout at 10% of baseline saturation: p99.9", "ms", lambda r: r["messages"]["latency_ms"]["p999"], False),
    ("echo_rt", "echo", "echo: round trips/s", "/s", lambda r: r["messages"]["delivered_per_s"], True),
    ("echo_server_cpu", "echo", "echo: server CPU, all processes (% of a core)", "%", server_cpu, False),
    ("echo_tester_cpu", "echo", "echo: load tester CPU (% of a core)", "%", lambda r: r["tester_cpu_pct"], False),
    ("echo_p99", "echo", "echo: p99 round trip", "ms", lambda r: r["messages"]["latency_ms"]["p99"], False),
    ("http_rps", "http", "http: responses/s (16 connections)", "/s", lambda r: r["http"]["per_s"], True),
    ("http_p99", "http", "http: p99", "ms", lambda r: r["http"]["latency_ms"]["p99"], False),
    ("churn_cps", "churn", "churn: connect/close cycles/s (50 clients, 50 ms hold)", "/s", lambda r: r["churn"]["cycles_per_s"], True),
    ("churn_connect_p99", "churn", "churn: connect p99", "ms", lambda r: r["connections"]["connect_ms"]["p99"], False),
    ("idle_alive", "idle", f"idle: connections alive after the {idle_hold} hold (of {idle_clients})", "", lambda r: r["idle"]["alive_after_hold"], True),
    ("idle_bcast", "idle", "idle: broadcast reached all within", "ms", lambda r: r["idle"]["broadcast_all_ms"], False),
    ("idle_kib", "idle", "idle: server RSS per connection", "KiB", idle_kib, False),
    ("errors", None, "errors (all scenarios, all runs)", "", None, False),
]

results = {"quick": quick, "runs": int(runs), "targets": {}, "rate10_per_sender": None, "loadavg": []}
if os.path.exists(f"{out}/loadavg"):
    results["loadavg"] = [l.split() for l in open(f"{out}/loadavg")]
if os.path.exists(f"{out}/rate10"):
    results["rate10_per_sender"] = float(open(f"{out}/rate10").read())
for t in only:
    figs = {}
    for key, scen, label, unit, get, _ in FIGURES:
        if scen is None:
            vals = [float(sum(errors(r) for s in ("fanout-sat", "fanout-10pct", "echo", "http", "churn", "idle") for r in load(t, s)))]
        else:
            vals = []
            for r in load(t, scen):
                try:
                    v = get(r)
                except (KeyError, TypeError):
                    v = None
                if v is not None:
                    vals.append(float(v))
        if vals:
            figs[key] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals), "values": vals}
    bpm = [v for v in (broadcasts_per_msg(t, i) for i in range(1, int(runs) + 1)) if v is not None]
    if bpm:
        figs["broadcasts_per_msg_per_gateway"] = {"min": min(bpm), "median": statistics.median(bpm), "max": max(bpm), "n": len(bpm), "values": bpm}
    results["targets"][t] = figs

base = results["targets"].get("baseline", {})
def med(t, k):
    return results["targets"].get(t, {}).get(k, {}).get("median")

checks = []
def check(name, ok, detail):
    if ok is None:
        checks.append({"target": name, "met": None, "detail": detail + " (not measured)"})
    else:
        checks.append({"target": name, "met": bool(ok), "detail": detail})

bm = med("baseline", "fanout_msgs")
for t, need in (("dev", 0.8), ("cluster-1gw", 0.5), ("cluster-2gw", 0.5)):
    v = med(t, "fanout_msgs")
    if v is not None and bm:
        check(f"fanout {t} >= {need:.0%} of baseline msgs/s", v / bm >= need, f"{v:.0f} / {bm:.0f} = {v / bm:.1%}")
bp = med("baseline", "fanout10_p99")
for t in ("cluster-1gw", "cluster-2gw", "dev"):
    v = med(t, "fanout10_p99")
    if v is not None and bp is not None:
        check(f"fanout at 10%: {t} p99 within 2 ms of baseline", v - bp <= 2.0, f"{v:.2f} ms vs {bp:.2f} ms: +{v - bp:.2f} ms")
be = med("baseline", "echo_rt")
for t in ("cluster-1gw", "cluster-2gw", "dev"):
    v = med(t, "echo_rt")
    if v is not None and be:
        check(f"echo {t} >= 50% of baseline round trips/s", v / be >= 0.5, f"{v:.0f} / {be:.0f} = {v / be:.1%}")
for t in ("dev", "cluster-1gw", "cluster-2gw"):
    alive, kib, bc = med(t, "idle_alive"), med(t, "idle_kib"), med(t, "idle_bcast")
    if alive is not None:
        check(f"idle {t}: {idle_clients} alive after {idle_hold}", alive >= int(idle_clients), f"{alive:.0f} alive")
    if kib is not None:
        check(f"idle {t}: <= 10 KiB per connection", kib <= 10.0, f"{kib:.3f} KiB")
    if alive is not None:
        check(f"idle {t}: broadcast to all within 250 ms", bc is not None and bc <= 250.0, f"{bc:.1f} ms" if bc is not None else "not all reached")
for t in ("cluster-1gw", "cluster-2gw", "dev"):
    v = med(t, "broadcasts_per_msg_per_gateway")
    if v is not None:
        check(f"{t}: a broadcast crosses into each gateway once", abs(v - 1.0) < 0.01, f"{v:.3f} room broadcasts per message per gateway (/_partyline/metrics)")
results["checks"] = checks
json.dump(results, open(f"{out}/results.json", "w"), indent=2)

def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v:.2f}"
    if unit == "KiB":
        return f"{v:.2f}"
    if unit == "%":
        return f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"

lines = []
lines.append(f"Runs per figure: {runs} (idle: see n); {'QUICK mode' if quick else 'full'}; fanout at 10% uses --rate {results['rate10_per_sender']} per sender x 100 senders.")
lines.append("Load average (1/5/15 min) when each server started: " + "; ".join(f"{t} run {r}: {a} {b} {c}" for t, r, a, b, c in results["loadavg"]) + ".")
lines.append("")
header = "| figure | " + " | ".join(f"{t} (min / median / max)" for t in only) + " | " + " | ".join(f"{t} / baseline" for t in only if t != "baseline") + " |"
lines.append(header)
lines.append("|" + "---|" * (1 + len(only) + len([t for t in only if t != "baseline"])))
rows = FIGURES + [("broadcasts_per_msg_per_gateway", None, "room broadcasts into each gateway per message", "", None, False)]
for key, scen, label, unit, get, hib in rows:
    cells = []
    for t in only:
        f = results["targets"].get(t, {}).get(key)
        cells.append("-" if not f else f"{fmt(f['min'], unit)} / **{fmt(f['median'], unit)}** / {fmt(f['max'], unit)}" + (f" (n={f['n']})" if f["n"] == 1 else ""))
    ratios = []
    b = base.get(key, {}).get("median")
    for t in only:
        if t == "baseline":
            continue
        v = med(t, key)
        if v is None or b is None:
            ratios.append("-")
        elif unit == "ms":
            ratios.append(f"{v - b:+.2f} ms")
        elif unit == "%":
            ratios.append(f"{v - b:+.0f} pts")
        elif b:
            ratios.append(f"{v / b:.0%}")
        else:
            ratios.append("-")
    lines.append(f"| {label}{' (' + unit + ')' if unit in ('ms', 'KiB') else ''} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
lines.append("")
lines.append("| target (issue 4) | met | measured |")
lines.append("|---|---|---|")
for c in checks:
    lines.append(f"| {c['target']} | {'yes' if c['met'] else ('-' if c['met'] is None else '**NO**')} | {c['detail']} |")
md = "\n".join(lines) + "\n"
open(f"{out}/results.md", "w").write(md)
print(md)
EOF
# ---- the echo comparison: PartyKit, this checkout and the previous release, pinned

SERVER_CORE="${SERVER_CORE:-0}"
TESTER_CORE="${TESTER_CORE:-1}"
PARTYKIT="$ROOT/bench/partykit/node_modules/.bin/partykit"

# The previous release: a binary, or a git ref built once into target/bench/previous/<commit>
# (from `git archive`, with its own scripts/cluster.sh, since its flags may differ).
PREV_BIN=""; PREV_CLUSTER=""
previous_ref() {
  [ -n "$PREVIOUS" ] && { printf '%s\n' "$PREVIOUS"; return; }
  local tag
  tag="$(git tag -l 'v*' --sort=-v:refname --merged HEAD 2>/dev/null | while read -r t; do
    [ "$(git rev-parse "$t^{commit}")" != "$(git rev-parse HEAD)" ] && { echo "$t"; break; }
  done)"
  [ -n "$tag" ] && { printf '%s\n' "$tag"; return; }
  sed -n 's/^\([0-9a-f]\{7,40\}\).*/\1/p' "$ROOT/scripts/bench-previous" | head -n 1
}
build_previous() {
  local ref sha dir
  ref="$(previous_ref)"
  [ -n "$ref" ] || { log "no previous release named (--previous, a v* tag or scripts/bench-previous)"; return 1; }
  if [ -f "$ref" ] && [ -x "$ref" ]; then
    PREV_BIN="$(cd "$(dirname "$ref")" && pwd)/$(basename "$ref")"; PREV_CLUSTER="$ROOT/scripts/cluster.sh"
    log "previous release: the binary $PREV_BIN"
    return 0
  fi
  sha="$(git rev-parse --verify --quiet "$ref^{commit}")" || { log "previous release: $ref is not a commit here"; return 1; }
  dir="$ROOT/target/bench/previous/$sha"
  if [ ! -x "$dir/target/release/partyline" ]; then
    log "building the previous release ($ref, ${sha:0:10}) into $dir: once, several minutes"
    rm -rf "$dir/src"; mkdir -p "$dir/src"
    git archive "$sha" | tar -x -C "$dir/src"
    if ! (cd "$dir/src" && cargo build --release --bin partyline --target-dir "$dir/target") \
      >"$OUT/logs/previous-build.log" 2>&1; then
      tail -n 20 "$OUT/logs/previous-build.log" >&2
      log "previous release: the build failed (log: $OUT/logs/previous-build.log)"
      return 1
    fi
  fi
  PREV_BIN="$dir/target/release/partyline"; PREV_CLUSTER="$dir/src/scripts/cluster.sh"
  log "previous release: $ref (${sha:0:10})"
}

# start_pinned_target NAME: like start_target, every server process pinned to $SERVER_CORE
# (the echo comparison and the fan-out sweep; cluster-1gw is the same as cluster).
start_pinned_target() {
  local name="$1" p np rp gp bin cluster_sh
  URLS=(); PIDS=(); GATEWAY_PORTS=()
  case "$name" in
    baseline)
      p="$(pick_port)"
      taskset -c "$SERVER_CORE" "$BASELINE" --port "$p" >"$OUT/logs/baseline.log" 2>&1 &
      CHILD_PIDS+=($!); PIDS=($!)
      wait_http "$p" $! baseline
      URLS=("ws://127.0.0.1:$p")
      ;;
    partykit)
      p="$(pick_port)"
      # Its own process group, so stopping it stops the workerd and esbuild it starts.
      (cd "$ROOT/bench/partykit/echo" && exec setsid taskset -c "$SERVER_CORE" "$PARTYKIT" dev --port "$p") \
        >"$OUT/logs/partykit.log" 2>&1 &
      CHILD_PIDS+=($!)
      local i
      for i in $(seq 1 300); do
        [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$p/parties/echo/up")" != 000 ] && break
        sleep 0.1
      done
      # workerd does the work; node and esbuild only watch files. Count every process of the tree.
      PIDS=($(ps -o pid=,comm= --sid "$!" | awk '$2 == "workerd" {print $1; exit}') $!)
      URLS=("ws://127.0.0.1:$p")
      ;;
    dev | previous-dev)
      bin="$BIN"; [ "$name" = previous-dev ] && bin="$PREV_BIN"
      p="$(pick_port)"
      taskset -c "$SERVER_CORE" "$bin" dev --ephemeral --host 127.0.0.1 --port "$p" >"$OUT/logs/$name.log" 2>&1 &
      CHILD_PIDS+=($!); PIDS=($!)
      wait_http "$p" $! "$name"
      URLS=("ws://127.0.0.1:$p")
      ;;
    cluster | cluster-1gw | previous-cluster)
      bin="$BIN"; cluster_sh="$ROOT/scripts/cluster.sh"
      [ "$name" = previous-cluster ] && { bin="$PREV_BIN"; cluster_sh="$PREV_CLUSTER"; }
      np="$(pick_port)"; rp="$(pick_port)"; gp="$(pick_port)"
      CLUSTER_DIRS+=("$OUT/$name")
      CLUSTER_DIR="$OUT/$name" CLUSTER_REDIS_PORT="$rp" CLUSTER_NODE_PORTS="$np" CLUSTER_GATEWAY_PORTS="$gp" \
        PARTYLINE_BIN="$bin" PARTYLINE_LEASE_PROFILE=standard CLUSTER_NO_BUILD=1 \
        taskset -c "$SERVER_CORE" "$cluster_sh" up >"$OUT/logs/$name-up.log" 2>&1 || {
        cat "$OUT/logs/$name-up.log" >&2
        log "could not start $name"
        return 1
      }
      URLS=("ws://127.0.0.1:$gp")
      PIDS=("$(cut -d' ' -f1 "$OUT/$name/pids/gateway-1.pid")" "$(cut -d' ' -f1 "$OUT/$name/pids/node-1.pid")"
        "$(cut -d' ' -f1 "$OUT/$name/pids/redis.pid")")
      ;;
  esac
  printf '%s\n' "${#URLS[@]}" >"$OUT/edge.$name"
}

if [ "$ECHO" = 1 ] && [ "$SUMMARIZE" = 0 ]; then
  ECHO_TARGETS="partykit baseline dev cluster previous-dev previous-cluster"
  if [ ! -x "$PARTYKIT" ]; then
    (cd "$ROOT/bench/partykit" && npm ci --no-audit --no-fund --loglevel=error) >"$OUT/logs/partykit-install.log" 2>&1 || true
  fi
  [ -x "$PARTYKIT" ] || { log "npm partykit is not installed (bench/partykit): no PartyKit column"; ECHO_TARGETS="${ECHO_TARGETS/partykit /}"; }
  build_previous || ECHO_TARGETS="$(echo "$ECHO_TARGETS" | sed 's/previous-[a-z]*//g')"
  [ "$(nproc)" -ge 2 ] || log "one core: the servers and the load tester share it (figures not comparable)"
  ECHO_ARGS=(--clients 50 --rooms 1 --size "$SIZE" --window 1 --warmup "$WARMUP" --duration "$DURATION" --drain 5s)
  for run in $(seq 1 "$RUNS"); do
    for target in $ECHO_TARGETS; do
      log "== echo comparison: $target, run $run of $RUNS (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
      if start_pinned_target "$target"; then
        sleep 1
        TESTER_PIN=(taskset -c "$TESTER_CORE")
        tester "$target" echo50 "$run" echo "${ECHO_ARGS[@]}"
        TESTER_PIN=()
      fi
      stop_target
    done
  done
  python3 - "$OUT" "$RUNS" <<'PY'
import glob, json, os, statistics, sys
out, runs = sys.argv[1], sys.argv[2]
rows = {}
for t in ["partykit", "baseline", "dev", "cluster", "previous-dev", "previous-cluster"]:
    rs = []
    for f in sorted(glob.glob(f"{out}/runs/{t}.echo50.*.json")):
        try:
            rs.append(json.load(open(f)))
        except Exception:
            pass
    if rs:
        rt = [r["messages"]["delivered_per_s"] for r in rs]
        p99 = [r["messages"]["latency_ms"]["p99"] for r in rs]
        cpu = [sum(x["cpu_pct"] for x in r["servers"] if x.get("cpu_pct") is not None) for r in rs]
        tcpu = [r.get("tester_cpu_pct") or 0.0 for r in rs]
        rows[t] = {"rt": rt, "median": statistics.median(rt), "p99": statistics.median(p99),
                   "server_cpu": statistics.median(cpu), "tester_cpu": statistics.median(tcpu)}
lines = [f"Echo comparison: the echo party, 50 clients, one message in flight each, servers on one core, "
         f"the load tester on another; median of {runs} run(s). CPU is % of one core (the server's: all "
         f"its processes). A load tester near 100 % is the limit of what this machine can measure: "
         f"the baseline row is a bare tokio-tungstenite echo server.", "",
         "| server | round trips/s (each run) | median | p99 (median) | server CPU | tester CPU |",
         "|---|---|---|---|---|---|"]
for t, r in rows.items():
    lines.append(f"| {t} | {', '.join(f'{v:,.0f}' for v in r['rt'])} | **{r['median']:,.0f}** | {r['p99']:.2f} ms "
                 f"| {r['server_cpu']:.0f} % | {r['tester_cpu']:.0f} % |")
goals = []
def goal(name, a, b, need):
    if a in rows and b in rows and rows[b]["median"]:
        v = rows[a]["median"] / rows[b]["median"]
        goals.append({"goal": name, "ratio": v, "need": need, "met": None if need is None else v >= need})
goal("dev / partykit", "dev", "partykit", 3.0)
goal("cluster / partykit", "cluster", "partykit", 2.0)
goal("dev / previous release", "dev", "previous-dev", 1.0)
goal("cluster / previous release", "cluster", "previous-cluster", 1.0)
goal("baseline / partykit (the ceiling on this machine)", "baseline", "partykit", None)
goal("dev / baseline", "dev", "baseline", None)
goal("cluster / baseline", "cluster", "baseline", None)
lines += ["", "| ratio | measured | goal |", "|---|---|---|"]
for g in goals:
    verdict = "" if g["met"] is None else (" (met)" if g["met"] else " (**NOT met**)")
    need = "(for reference)" if g["need"] is None else f">= {g['need']:.1f}x{verdict}"
    lines.append(f"| {g['goal']} | {g['ratio']:.2f}x | {need} |")
md = "\n".join(lines) + "\n"
open(f"{out}/echo.md", "w").write(md)
json.dump({"rows": rows, "goals": goals}, open(f"{out}/echo.json", "w"), indent=2)
print(md)
PY
fi

# ---- the fan-out saturation sweep: one room, 100 clients, 10 senders, offered rates rising

SWEEP_TARGETS="${SWEEP_TARGETS:-baseline dev cluster-1gw}"
# Offered deliveries per second (senders x rate x 100 recipients).
SWEEP_OFFERED="${SWEEP_OFFERED:-3000000 4000000 5000000 6000000 7000000}"
if [ "$FANOUT" = 1 ] && [ "$SUMMARIZE" = 0 ]; then
  for run in $(seq 1 "$RUNS"); do
    for target in $SWEEP_TARGETS; do
      log "== fan-out sweep: $target, run $run of $RUNS (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
      start_pinned_target "$target"
      sleep 1
      TESTER_PIN=(taskset -c "$TESTER_CORE")
      for offered in $SWEEP_OFFERED; do
        rate="$(python3 -c "print($offered / (10 * $CLIENTS))")"
        tester "$target" "sweep$offered" "$run" fanout --clients "$CLIENTS" --rooms 1 --senders 10 --size "$SIZE" \
          --rate "$rate" --warmup "$WARMUP" --duration "$DURATION" --drain 10s
      done
      TESTER_PIN=()
      stop_target
    done
  done
fi
# The sweep's summary (also with --summarize DIR, when DIR holds sweep runs).
if [ "$FANOUT" = 1 ] && compgen -G "$OUT/runs/*.sweep*.json" >/dev/null; then
  python3 - "$OUT" "$RUNS" "$SWEEP_OFFERED" <<'PY'
import glob, json, statistics, sys
out, runs, offered = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split()]
def fig(t, o):
    rs = []
    for f in sorted(glob.glob(f"{out}/runs/{t}.sweep{o}.*.json")):
        try:
            rs.append(json.load(open(f)))
        except Exception:
            pass
    if not rs:
        return None
    m = [r["messages"] for r in rs]
    # Server CPU (every process of the target) per delivery, in ns.
    ns = [sum(s.get("cpu_pct") or 0 for s in r["servers"]) / 100 / r["messages"]["delivered_per_s"] * 1e9
          for r in rs if r["messages"]["delivered_per_s"] and r.get("servers")]
    return {"delivered": statistics.median(x["delivered_per_s"] for x in m),
            "p99": statistics.median(x["latency_ms"]["p99"] for x in m),
            "lost": sum(x["lost"] for x in m),
            "server_ns": statistics.median(ns) if ns else None,
            "tester_cpu": statistics.median(r["tester_cpu_pct"] for r in rs if r.get("tester_cpu_pct") is not None)
            if any(r.get("tester_cpu_pct") is not None for r in rs) else None}
targets = ["baseline", "dev", "cluster-1gw"]
rows = {t: {o: fig(t, o) for o in offered} for t in targets}
def table(head, cell):
    out = ["| offered deliveries/s | " + " | ".join(f"{t}: {head}" for t in targets) + " |", "|---|" + "---|" * len(targets)]
    for o in offered:
        out.append(f"| {o:,} | " + " | ".join("-" if not rows[t][o] else cell(rows[t][o]) for t in targets) + " |")
    return out
def delivered(f):
    return f"{f['delivered']:,.0f}, {f['p99']:.1f} ms" + (f" (lost {f['lost']})" if f["lost"] else "")
def cpu(f):
    if f["server_ns"] is None:
        return "-"
    return f"{f['server_ns']:.0f} ns" + (f", {f['tester_cpu']:.0f} %" if f["tester_cpu"] is not None else "")
lines = [f"Fan-out sweep: one room, 100 clients, 10 senders at a fixed rate, 64-byte messages; median of {runs} run(s).", ""]
lines += table("delivered/s, p99", delivered)
lines += ["", "Server CPU per delivery (every process of the target, ns; median) and the load tester's CPU (% of its core):", ""]
lines += table("server ns/delivery, tester CPU", cpu)
base = {o: f for o, f in rows["baseline"].items() if f}
goals = []
if base:
    sat = max(base, key=lambda o: base[o]["delivered"])
    b = base[sat]
    lines += ["", f"Baseline saturation: {b['delivered']:,.0f} deliveries/s at {sat:,} offered (p99 {b['p99']:.1f} ms).", "",
              "| target at the baseline's saturation point | delivered / baseline | p99 / baseline | goal |", "|---|---|---|---|"]
    for t in ("cluster-1gw", "dev"):
        f = rows[t].get(sat)
        if not f:
            continue
        d, p = f["delivered"] / b["delivered"], f["p99"] / b["p99"] if b["p99"] else float("inf")
        met = d >= 0.9 and p <= 2.0
        goals.append({"target": t, "offered": sat, "delivered_ratio": d, "p99_ratio": p, "met": met})
        lines.append(f"| {t} | {d:.0%} | {p:.2f}x | >= 90 %, p99 <= 2x: {'met' if met else '**NOT met**'} |")
md = "\n".join(lines) + "\n"
open(f"{out}/fanout-sweep.md", "w").write(md)
json.dump({"rows": {t: {str(o): f for o, f in r.items()} for t, r in rows.items()}, "goals": goals},
          open(f"{out}/fanout-sweep.json", "w"), indent=2)
print(md)
PY
fi

[ "$ECHO_ONLY" = 1 ] || log "results: $OUT/results.md and $OUT/results.json (per-run JSON in $OUT/runs/)"
[ "$FANOUT" = 0 ] || [ "$SUMMARIZE" = 1 ] || log "fan-out sweep: $OUT/fanout-sweep.md and $OUT/fanout-sweep.json"
[ "$ECHO" = 0 ] || [ "$SUMMARIZE" = 1 ] || log "echo comparison: $OUT/echo.md and $OUT/echo.json"
[ "$FAILED" = 0 ] || log "$FAILED tester run(s) failed: see $OUT/runs/*.txt"
