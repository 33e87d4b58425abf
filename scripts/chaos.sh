#!/usr/bin/env bash
# Chaos run (issue 7): random faults against a local Partyline cluster under load, checked
# against what storage holds. Builds the `partyline` binary and the runner, then runs it.
#
#   scripts/chaos.sh                       10 rounds, a seed from the clock
#   scripts/chaos.sh --rounds 200          every kind 14 times or so (about 26 min on 2 cores)
#   scripts/chaos.sh --rounds 8 --seed 42 --kinds sigkill,sigterm --keep-logs
#   scripts/chaos.sh --rounds 12 --kinds rolling-restart,drain-rebalance,slow-sigterm,partition-reject,moved-twice,replica-failover
#   scripts/chaos.sh --profile standard    the production lease timing (TTL 10 s) instead of fast (3 s)
#   scripts/chaos.sh --release ...         build and run release binaries instead
#   scripts/chaos.sh --help                this text and the runner's options
#
# Every argument but --release goes to the runner (partyline-chaos, tests/src/bin/chaos.rs).
# Each round: a fresh cluster on loopback (durable redis-server, 3 nodes, 2 gateways, the lease
# profile of --profile, fast by default), chat and hibernating counter rooms under load, one
# fault, recovery, checks (storage: lost, phantom, stale writes; rooms that ran twice; lease
# epochs; hibernating clients disconnected by drains or joins; and the close reasons and error
# bodies clients received: documented texts only, issue 22). Fault kinds: sigkill, sigstop,
# cut-hold, cut-drop, redis-restart, redis-outage, sigterm, join, rolling-restart,
# drain-rebalance, slow-sigterm, partition-reject (network namespaces: needs root, ip and
# iptables; left out, saying why, without them), moved-twice, replica-failover (a Redis Cluster
# with replicas); --help describes each. One line per round, a summary at the end; exit status 1
# if a round found a problem (an undocumented client text is one), 130 if interrupted
# (Ctrl-C stops the current round and kills its processes).
#
# Debug build by default: it is the build scripts/test.sh already makes (no second, release,
# build of the whole server), and the figures are set by the lease timings (seconds), not by
# CPU. --release gives figures closer to production CPU use, after a longer first build.
# Not part of scripts/test.sh (too long); the fault tests there run each fault once.
# Needs redis-server (scripts/test.sh installs it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PROFILE=debug
HELP=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --release) PROFILE=release ;;
    -h|--help) HELP=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done

BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/partyline-chaos"
# Two builds, as scripts/test.sh and the fault tests make them (one build of both would unify
# the two packages' dependency features and compile the server's dependencies once more).
RELEASE=()
if [ "$PROFILE" = release ]; then
  RELEASE=(--release)
fi
build() {
  cargo build "${RELEASE[@]}" "$@" --bin partyline
  cargo build "${RELEASE[@]}" "$@" -p partyline-tests --bin partyline-chaos
}

if [ "$HELP" -eq 1 ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  echo
  # The runner's own options (a quick no-op build when it is up to date).
  build --quiet
  "$BIN" --help
  exit 0
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "chaos.sh: redis-server is not on PATH (Debian: apt-get install redis-server; scripts/test.sh installs it)" >&2
  exit 2
fi

echo "==> cargo build ${RELEASE[*]} --bin partyline; cargo build ${RELEASE[*]} -p partyline-tests --bin partyline-chaos"
build

echo "==> $BIN ${ARGS[*]}"
exec "$BIN" "${ARGS[@]}"
