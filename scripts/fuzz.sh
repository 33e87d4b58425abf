#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ for a while each, growing the corpus in fuzz/corpus/<target>.
#
#   scripts/fuzz.sh                    every target for 60 s
#   scripts/fuzz.sh 10m                every target for 10 minutes
#   scripts/fuzz.sh 5m wire route      only these targets
#   scripts/fuzz.sh --cmin             minimize the corpus of every target (keep it small; do
#                                      this before committing a grown corpus)
#
# Targets: route (route and query parser), addresses (client addresses from forwarded headers),
# wire (the link protocol's protobuf decoding), storage_keys (storage key encodings),
# list_ranges (list ranges of the embedded and memory stores against a model), yjs_batch (the
# Yjs party's y-pk-batch reassembly against a model).
# Installs cargo-fuzz when missing; builds on stable with RUSTC_BOOTSTRAP=1 (no nightly needed).
# A crash stops its target and leaves the input in fuzz/artifacts/<target>/: copy it to
# fuzz/regressions/<target>/ (the test suite replays both directories), then fix the bug.
# Not part of scripts/test.sh; the corpus replay is (tests/tests/fuzz_corpus.rs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
export RUSTC_BOOTSTRAP=1
ALL=(route addresses wire storage_keys list_ranges yjs_batch)

TIME=60s
CMIN=0
TARGETS=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$ROOT/scripts/fuzz.sh"; exit 0 ;;
    --cmin) CMIN=1 ;;
    [0-9]*) TIME="$arg" ;;
    *) TARGETS+=("$arg") ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

seconds() { # 90, 90s, 10m, 1h
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
SECS="$(seconds "$TIME")"

feature() { # the crate a target checks (a feature of fuzz/Cargo.toml): build only that one
  case "$1" in
    route|addresses) echo gateway ;;
    wire|storage_keys|list_ranges) echo node ;;
    yjs_batch) echo yjs ;;
    *) echo "fuzz.sh: unknown target $1 (targets: ${ALL[*]})" >&2; exit 2 ;;
  esac
}
for t in "${TARGETS[@]}"; do feature "$t" >/dev/null; done

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz)"
  cargo install cargo-fuzz
fi

if [ "$CMIN" -eq 1 ]; then
  # Keeps the inputs that reach new edges (not new hit counts), at most 512 bytes each: a few
  # hundred small files per target instead of thousands.
  for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    tmp="$(mktemp -d)"
    cargo fuzz run --no-default-features --features "$(feature "$t")" "$t" "$tmp" "corpus/$t" -- -merge=1 -use_counters=0 -max_len=512 >/dev/null 2>&1
    before="$(find "corpus/$t" -type f | wc -l)"
    rm -rf "corpus/$t" && mv "$tmp" "corpus/$t"
    echo "$t: $before -> $(find "corpus/$t" -type f | wc -l) inputs"
  done
  exit 0
fi

LOGS="$(mktemp -d)"
SUMMARY=()
STATUS=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "regressions/$t"
  echo "==> $t for ${SECS}s"
  rc=0
  cargo fuzz run --no-default-features --features "$(feature "$t")" "$t" "corpus/$t" "regressions/$t" -- \
    -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$LOGS/$t.log" 2>&1 || rc=$?
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' | tail -1)"
  cov="$(grep -o 'cov: [0-9]*' "$LOGS/$t.log" | tail -1 | grep -o '[0-9]*')"
  files="$(find "corpus/$t" -type f | wc -l)"
  if [ "$rc" -ne 0 ]; then
    STATUS=1
    echo "fuzz.sh: $t FAILED (exit $rc); its log: $LOGS/$t.log; the input is in fuzz/artifacts/$t/" >&2
    tail -40 "$LOGS/$t.log" >&2
    SUMMARY+=("$(printf '%-14s %12s %8s %8s  CRASH' "$t" "${runs:-?}" "${cov:-?}" "$files")")
  else
    SUMMARY+=("$(printf '%-14s %12s %8s %8s  ok' "$t" "${runs:-?}" "${cov:-?}" "$files")")
  fi
done
echo
printf '%-14s %12s %8s %8s  %s\n' target executions coverage corpus result
printf '%s\n' "${SUMMARY[@]}"
echo "(each target ran ${SECS}s; logs in $LOGS)"
exit "$STATUS"
