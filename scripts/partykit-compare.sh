#!/usr/bin/env bash
# The PartyKit fixture projects' checks against the real PartyKit dev server and against
# `partyline dev`, side by side. See --help.
set -uo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/partykit-compare.sh [--help] [FIXTURE...]

Runs each PartyKit fixture project's checks twice: against the real PartyKit dev server
(npm `partykit`, installed on demand into bench/partykit) and against `partyline dev`, then
prints one row per fixture:

  fixture | partykit dev | partyline dev

with the passed/failed counts of each run. The checks encode what PartyKit does, so a check
that passes on `partykit dev` and fails on `partyline dev` is a Partyline bug: the script then
lists those checks and exits 1. (Checks are compared in the order they print, as each check
script runs its checks in a fixed order.)

Fixtures (all by default, or the names given):
  tests/partykit-projects/<name>/   runs `node check.mjs 127.0.0.1:PORT` in that folder
  examples/partykit                 runs `node test/clients.mjs 127.0.0.1:PORT` (name: examples/partykit)

Each server runs from the fixture's folder on its own free loopback port (`partykit dev --port P`,
`partyline dev --host 127.0.0.1 --port P`), with storage in a temporary directory, with the
node_modules/.bin folders above the fixture on PATH (as `npm run dev` would have them: a
partykit.json build.command may call a package's tool). The script waits until the port
answers (START_TIMEOUT), runs the check (CHECK_TIMEOUT), stops the server, and removes any
file the server wrote into the fixture's folder (e.g. `partykit dev` writes serve.build's output
to <serve.path>/dist). Every server is killed when the script exits, however it exits.

Note: `partykit dev` always binds 0.0.0.0 (it has no --host option); it is given
--disable-request-cf-fetch so it makes no outbound request.

Environment:
  PARTYLINE_BIN    the partyline binary (default: target/release/partyline, else
                   target/debug/partyline, else `cargo build --bin partyline`)
  PARTYKIT_BIN     the partykit CLI (default: bench/partykit/node_modules/.bin/partykit, installed
                   with `npm install` in bench/partykit when missing)
  START_TIMEOUT    seconds to wait for a server's port (default 90)
  CHECK_TIMEOUT    seconds a check run may take (default 180)
  TOTAL_TIMEOUT    seconds the whole script may take, builds and installs included (default 2400)
  OUT              where the servers' and checks' logs go (default target/partykit-compare)
  ONLY             `partykit` or `partyline`: run one server only (no comparison, exit status
                   from that server's failures)

Exit status: 0 when Partyline passes every check PartyKit passes; 1 otherwise; 2 on a setup
error (no partyline binary, partykit not installable, an unknown fixture).
EOF
}

case "${1:-}" in -h | --help) usage; exit 0 ;; esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FIXTURES_DIR="$ROOT/tests/partykit-projects"
START_TIMEOUT="${START_TIMEOUT:-90}"
CHECK_TIMEOUT="${CHECK_TIMEOUT:-180}"
TOTAL_TIMEOUT="${TOTAL_TIMEOUT:-2400}"
OUT="${OUT:-$ROOT/target/partykit-compare}"
ONLY="${ONLY:-}"
mkdir -p "$OUT"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/partykit-compare.XXXXXX")"

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    # The server runs in its own process group (setsid): end it and its children (workerd,
    # esbuild, build commands) by that group's id.
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
WATCHDOG_PID=""
CHECK_PID=""
cleanup() {
  [ -z "$CHECK_PID" ] || kill -TERM "$CHECK_PID" 2>/dev/null || true
  stop_server
  [ -z "$WATCHDOG_PID" ] || kill "$WATCHDOG_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'echo "partykit-compare: stopped (TOTAL_TIMEOUT=${TOTAL_TIMEOUT}s or a signal)" >&2; exit 143' TERM
# The watchdog: the whole run ends after TOTAL_TIMEOUT seconds, whatever happens.
(
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$TOTAL_TIMEOUT" &
  s=$!
  wait "$s" && kill -TERM $$ 2>/dev/null
) </dev/null >/dev/null 2>&1 &
WATCHDOG_PID=$!

die() { echo "partykit-compare: $*" >&2; exit 2; }

# --- the fixtures --------------------------------------------------------------------------
declare -a NAMES=()
if [ $# -gt 0 ]; then
  NAMES=("$@")
else
  for f in "$FIXTURES_DIR"/*/check.mjs; do NAMES+=("$(basename "$(dirname "$f")")"); done
  NAMES+=("examples/partykit")
fi
fixture_dir() { # name -> folder
  if [ "$1" = "examples/partykit" ]; then echo "$ROOT/examples/partykit"; else echo "$FIXTURES_DIR/$1"; fi
}
fixture_cmd() { # name -> the check script, relative to the fixture's folder
  if [ "$1" = "examples/partykit" ]; then echo "test/clients.mjs"; else echo "check.mjs"; fi
}
for name in "${NAMES[@]}"; do
  [ -f "$(fixture_dir "$name")/$(fixture_cmd "$name")" ] || die "no fixture $name"
done

# --- the servers ---------------------------------------------------------------------------
command -v node >/dev/null || die "node is not on PATH"
if [ ! -d "$FIXTURES_DIR/node_modules" ]; then
  (cd "$FIXTURES_DIR" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/partykit-projects failed"
fi
if [ ! -d "$ROOT/examples/partykit/node_modules" ]; then
  (cd "$ROOT/examples/partykit" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in examples/partykit failed"
fi

PARTYKIT="${PARTYKIT_BIN:-$ROOT/bench/partykit/node_modules/.bin/partykit}"
if [ "$ONLY" != "partyline" ] && [ ! -x "$PARTYKIT" ]; then
  [ -z "${PARTYKIT_BIN:-}" ] || die "PARTYKIT_BIN=$PARTYKIT_BIN is not executable"
  echo "partykit-compare: installing partykit into bench/partykit" >&2
  (cd "$ROOT/bench/partykit" && timeout 600 npm install --no-audit --no-fund --loglevel=error) || die "npm install in bench/partykit failed"
  [ -x "$PARTYKIT" ] || die "no $PARTYKIT after npm install"
fi

PARTYLINE="${PARTYLINE_BIN:-}"
if [ "$ONLY" != "partykit" ]; then
  if [ -z "$PARTYLINE" ]; then
    for b in "$ROOT/target/release/partyline" "$ROOT/target/debug/partyline"; do
      if [ -x "$b" ]; then PARTYLINE="$b"; break; fi
    done
  fi
  if [ -z "$PARTYLINE" ]; then
    echo "partykit-compare: building partyline (cargo build --bin partyline)" >&2
    cargo build --bin partyline || die "cargo build --bin partyline failed"
    PARTYLINE="$ROOT/target/debug/partyline"
  fi
  [ -x "$PARTYLINE" ] || die "PARTYLINE_BIN=$PARTYLINE is not executable"
fi

free_port() {
  node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

wait_port() { # port pid -> 0 when it answers
  local deadline=$((SECONDS + START_TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$2" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

# PATH with every node_modules/.bin from the folder up to /, nearest first (as `npm run`).
npm_path() {
  local dir="$1" p=""
  while :; do
    [ -d "$dir/node_modules/.bin" ] && p="$p$dir/node_modules/.bin:"
    [ "$dir" = "/" ] && break
    dir="$(dirname "$dir")"
  done
  echo "$p$PATH"
}

listing() { # folder -> every path under it but node_modules
  (cd "$1" && find . -name node_modules -prune -o -print | LC_ALL=C sort)
}

# Runs one fixture on one server; sets RESULT to "P F" (or "error ...") and leaves the check's
# output in $OUT/<label>.check.log. (Not in a subshell: the EXIT trap must see SERVER_PID.)
RESULT=""
run_one() { # server name
  local server="$1" name="$2" dir cmd port label log clog before rc
  dir="$(fixture_dir "$name")"
  cmd="$(fixture_cmd "$name")"
  label="$(echo "$name" | tr '/' '-').$server"
  log="$OUT/$label.server.log"
  clog="$OUT/$label.check.log"
  : >"$clog"
  port="$(free_port)"
  before="$TMP/$label.before"
  listing "$dir" >"$before"
  local state="$TMP/state-$label"
  mkdir -p "$state"
  if [ "$server" = partykit ]; then
    (cd "$dir" && PATH="$(npm_path "$dir")" exec setsid "$PARTYKIT" dev --port "$port" --persist "$state" \
      --no-hotkeys --disable-request-cf-fetch) </dev/null >"$log" 2>&1 &
  else
    (cd "$dir" && PATH="$(npm_path "$dir")" exec setsid "$PARTYLINE" dev --host 127.0.0.1 --port "$port" \
      --data-dir "$state") </dev/null >"$log" 2>&1 &
  fi
  SERVER_PID=$!
  local result
  if wait_port "$port" "$SERVER_PID"; then
    # In the background and waited for, so a signal (the watchdog's TERM) is handled at once.
    (cd "$dir" && exec timeout --kill-after=10 "$CHECK_TIMEOUT" node "$cmd" "127.0.0.1:$port") >"$clog" 2>&1 &
    CHECK_PID=$!
    wait "$CHECK_PID"
    rc=$?
    CHECK_PID=""
    local summary
    summary="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$clog" | tail -1)"
    if [ -n "$summary" ]; then
      result="$(echo "$summary" | sed -E 's/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/')"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      result="error timed-out"
    else
      result="error rc=$rc"
    fi
  else
    echo "(the server did not answer on 127.0.0.1:$port within ${START_TIMEOUT}s)" >>"$clog"
    result="error no-server"
  fi
  stop_server
  # Remove what the server wrote into the fixture's folder (serve.build output and the like).
  listing "$dir" | LC_ALL=C comm -13 "$before" - | while read -r p; do rm -rf "${dir:?}/${p#./}"; done
  RESULT="$result"
}

# The results of a check log in order: "pass<TAB>name" / "fail<TAB>name".
results() {
  sed -nE -e 's/^PASS (.*)$/pass\t\1/p' -e 's/^ok +(.*)$/pass\t\1/p' -e 's/^FAIL (.*)$/fail\t\1/p' "$1"
}

cell() { # "P F" | "error ..." -> table text
  case "$1" in
    error*) echo "${1#error }" ;;
    *) set -- $1; echo "$1 passed, $2 failed" ;;
  esac
}

declare -a ROWS=() REGRESSIONS=()
status=0
for name in "${NAMES[@]}"; do
  pk="-"; pl="-"
  label="$(echo "$name" | tr '/' '-')"
  if [ "$ONLY" != "partyline" ]; then
    echo "partykit-compare: $name on partykit dev" >&2
    run_one partykit "$name"; pk="$RESULT"
  fi
  if [ "$ONLY" != "partykit" ]; then
    echo "partykit-compare: $name on partyline dev" >&2
    run_one partyline "$name"; pl="$RESULT"
  fi
  ROWS+=("$name|$( [ "$pk" = - ] && echo - || cell "$pk")|$( [ "$pl" = - ] && echo - || cell "$pl")")
  if [ -z "$ONLY" ]; then
    # A check that passes on partykit dev and not on partyline dev (by position).
    mapfile -t a < <(results "$OUT/$label.partykit.check.log")
    mapfile -t b < <(results "$OUT/$label.partyline.check.log")
    for i in "${!a[@]}"; do
      bi="${b[$i]:-}"
      if [ "${a[$i]%%$'\t'*}" = pass ] && [ "${bi%%$'\t'*}" != pass ]; then
        REGRESSIONS+=("$name: ${a[$i]#*$'\t'} -> partyline: ${bi:-(did not run)}")
        REGRESSIONS[-1]="${REGRESSIONS[-1]/$'\t'/ }"
      fi
    done
    case "$pk:$pl" in
      error*:error*) ;;
      [0-9]*:error*) REGRESSIONS+=("$name: partyline dev run: ${pl#error }") ;;
    esac
  elif [ "$ONLY" = partyline ] && [ "$pl" != "${pl#error}" -o "${pl#* }" != 0 ]; then
    status=1
  elif [ "$ONLY" = partykit ] && [ "$pk" != "${pk#error}" -o "${pk#* }" != 0 ]; then
    status=1
  fi
done

w=7
for r in "${ROWS[@]}"; do n="${r%%|*}"; [ ${#n} -gt $w ] && w=${#n}; done
printf "%-${w}s | %-24s | %-24s\n" fixture "partykit dev" "partyline dev"
printf "%s-|-%s-|-%s\n" "$(printf '%*s' $w '' | tr ' ' -)" "$(printf '%24s' '' | tr ' ' -)" "$(printf '%24s' '' | tr ' ' -)"
for r in "${ROWS[@]}"; do
  IFS='|' read -r n p l <<<"$r"
  printf "%-${w}s | %-24s | %-24s\n" "$n" "$p" "$l"
done
echo "(logs: $OUT)"
if [ ${#REGRESSIONS[@]} -gt 0 ]; then
  echo
  echo "Checks that pass on partykit dev and fail on partyline dev:"
  for r in "${REGRESSIONS[@]}"; do echo "  - $r"; done
  status=1
fi
exit $status
