#!/usr/bin/env bash
# The one command that installs what the tests need and runs every test.
#
#   scripts/test.sh           install missing deps, then fmt, clippy, cargo deny, build, nextest,
#                             doctests, cargo package of the SDK, cargo doc
#   scripts/test.sh --quick   same, without fmt, clippy, cargo deny, cargo package and cargo
#                             doc (local iteration)
#
# Works on a fresh Debian bookworm machine (root, Rust + cargo-nextest, node 20 + npm),
# and is fast when everything is already installed. Stops at the first failing step.
# Environment: NEXTEST_PROFILE picks a nextest profile (default: `ci` if
# .config/nextest.toml defines one); nextest's other NEXTEST_* variables also apply.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

STEP=0
header() {
  STEP=$((STEP + 1))
  printf '\n==> [%d] %s\n' "$STEP" "$*"
}

# run <description> <command...>: prints a header, runs the command, stops the script on failure.
run() {
  local desc="$1"; shift
  header "$desc"
  local start=$SECONDS rc=0
  "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '\ntest.sh: FAILED at step %d: %s (exit code %d)\n' "$STEP" "$desc" "$rc" >&2
    exit "$rc"
  fi
  printf '    ok (%ds)\n' "$((SECONDS - start))"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" -eq 0 ]; then as_root apt-get update && APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

install_cargo_deny() {
  # Built from source: about 3.5 CPU-minutes on a cold machine (2 cores: ~2-3 minutes).
  cargo install --locked cargo-deny
}

npm_ci() {
  (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
}

npm_ci_example() {
  (cd examples/partykit && npm ci --no-audit --no-fund --loglevel=error)
}

npm_ci_fixtures() {
  (cd tests/partykit-projects && npm ci --no-audit --no-fund --loglevel=error)
}

# ---- dependencies (only what is missing)

if command -v redis-server >/dev/null 2>&1; then
  header "redis-server: present ($(command -v redis-server))"
else
  run "install redis-server (apt-get)" apt_install redis-server
fi

# The compose test runs the load balancer of deploy/docker-compose.yml (HAProxy) on loopback.
if command -v haproxy >/dev/null 2>&1; then
  header "haproxy: present ($(command -v haproxy))"
else
  run "install haproxy (apt-get)" apt_install haproxy
fi

# The partition test (tests/tests/partition.rs) puts nodes in network namespaces (ip, from
# iproute2) with a REJECT rule between them (iptables); as root only, it skips otherwise.
if command -v ip >/dev/null 2>&1; then
  header "ip: present ($(command -v ip))"
else
  run "install iproute2 (apt-get)" apt_install iproute2
fi
if command -v iptables >/dev/null 2>&1; then
  header "iptables: present ($(command -v iptables))"
else
  run "install iptables (apt-get)" apt_install iptables
fi

# deploy/verify.sh checks deploy/prometheus (the alert rules, their unit tests, the scrape
# config) with promtool, which Debian ships in its prometheus package. The package's Prometheus
# server is not wanted: where the install started it as a service, stop and disable it.
install_promtool() {
  apt_install prometheus || return
  if [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1 && service prometheus status >/dev/null 2>&1; then
    as_root service prometheus stop >/dev/null 2>&1 || true
  fi
}
if command -v promtool >/dev/null 2>&1; then
  header "promtool: present ($(command -v promtool))"
else
  run "install promtool (apt-get prometheus)" install_promtool
fi

# compose v2, kubectl (kustomize), kubernetes-validate, hadolint, yamllint for deploy/verify.sh
# and the compose test: pinned, in target/deploy-tools, installed once.
run "deploy tools (deploy/verify.sh --install-only)" deploy/verify.sh --install-only

# The collaborative text page is checked in headless Chromium (tests/interop/textpage.mjs).
if command -v chromium >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ]; then
  header "chromium: present (${CHROMIUM:-$(command -v chromium)})"
else
  run "install chromium (apt-get)" apt_install chromium
fi

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "test.sh: '$tool' is not on PATH; the interop tests need Node.js 20+ and npm" >&2
    exit 1
  fi
done

if [ ! -d tests/interop/node_modules ] ||
   [ tests/interop/package-lock.json -nt tests/interop/node_modules/.package-lock.json ]; then
  run "npm ci (tests/interop)" npm_ci
else
  header "tests/interop/node_modules: up to date"
fi

# The PartyKit example project (its parties' npm dependencies and its test clients).
if [ ! -d examples/partykit/node_modules ] ||
   [ examples/partykit/package-lock.json -nt examples/partykit/node_modules/.package-lock.json ]; then
  run "npm ci (examples/partykit)" npm_ci_example
else
  header "examples/partykit/node_modules: up to date"
fi

# The fixture projects (tests/partykit-projects: pages built by serve.build and checked in
# Chromium, React, a Yjs editor, wasm from AssemblyScript).
if [ ! -d tests/partykit-projects/node_modules ] ||
   [ tests/partykit-projects/package-lock.json -nt tests/partykit-projects/node_modules/.package-lock.json ]; then
  run "npm ci (tests/partykit-projects)" npm_ci_fixtures
else
  header "tests/partykit-projects/node_modules: up to date"
fi

# ---- checks and tests

if [ "$QUICK" -eq 0 ]; then
  run "cargo fmt --all -- --check" cargo fmt --all -- --check
  run "cargo clippy --workspace --all-targets -- -D warnings" \
    cargo clippy --workspace --all-targets -- -D warnings
  if cargo deny --version >/dev/null 2>&1; then
    header "cargo-deny: present ($(cargo deny --version))"
  else
    run "install cargo-deny (cargo install --locked)" install_cargo_deny
  fi
  # Licenses, banned crates and sources (deny.toml). Not advisories: that database comes from
  # GitHub, which this machine cannot reach; run `cargo deny check advisories` where it can.
  run "cargo deny check bans licenses sources" cargo deny --log-level error check bans licenses sources
else
  header "--quick: skipping cargo fmt, cargo clippy and cargo deny"
fi

# The binaries (the process tests run target/debug/partyline) and every test in one build: with
# the tests selected, the binaries get the features the tests use (dev-dependencies), so the
# nextest step below reuses this build instead of compiling the dependency tree a second time.
run "cargo build --workspace --all-targets" cargo build --workspace --all-targets

# After the build: it also checks the files `partyline new` writes, with the binary just built.
run "deploy files (deploy/verify.sh)" deploy/verify.sh

NEXTEST_ARGS=(--workspace --no-fail-fast)
PROFILE_ARGS=()
if [ -z "${NEXTEST_PROFILE:-}" ] && [ -f .config/nextest.toml ] &&
   grep -Eq '^[[:space:]]*\[profile\.ci\]' .config/nextest.toml; then
  PROFILE_ARGS=(--profile ci)
fi
NEXTEST_ARGS+=("${PROFILE_ARGS[@]}")
run "cargo nextest run ${NEXTEST_ARGS[*]}" cargo nextest run "${NEXTEST_ARGS[@]}"

# The cluster suite once more with every test cluster on a 3-primary Redis Cluster (the Redis
# Cluster specific scenarios already ran above, in tests/tests/redis_cluster.rs). Selected with
# --workspace and a filter rather than -p, so the build above is reused as it is (-p would
# resolve features for one package and compile much of the tree again).
run "the cluster suite on Redis Cluster (PARTYLINE_TEST_REDIS=cluster)" \
  env PARTYLINE_TEST_REDIS=cluster cargo nextest run --workspace -E 'binary_id(partyline-tests::cluster)' \
  --no-fail-fast "${PROFILE_ARGS[@]}"

run "cargo test --workspace --doc" cargo test --workspace --doc

if [ "$QUICK" -eq 0 ]; then
  # The SDK stays publishable (its package builds on its own) and every crate's docs build
  # without warnings.
  run "cargo package -p partyline (the SDK, built from its package)" cargo package -p partyline --allow-dirty
  run "cargo doc --workspace --no-deps (warnings are errors)" \
    env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
fi

printf '\ntest.sh: all steps passed\n'
