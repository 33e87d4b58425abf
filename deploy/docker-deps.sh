#!/bin/sh
# Used by deploy/Dockerfile: copies what compiling the dependencies needs into DEST (the lock
# file, every workspace manifest, build scripts, .proto files) and puts an empty stub at each
# target root (src/lib.rs, src/main.rs, src/bin/*.rs, and `path = "*.rs"` in manifests). DEST
# changes only when those inputs change, so the image's dependency layer stays cached across
# ordinary source edits, and a new workspace member needs no change to the Dockerfile.
set -eu
DEST="$1"
mkdir -p "$DEST"
cp Cargo.lock "$DEST/"
find . -name Cargo.toml -not -path './target/*' -not -path '*/node_modules/*' | while read -r manifest; do
  dir="$(dirname "$manifest")"
  mkdir -p "$DEST/$dir"
  cp "$manifest" "$DEST/$manifest"
  if [ -f "$dir/build.rs" ]; then cp "$dir/build.rs" "$DEST/$dir/"; fi
  {
    for f in "$dir/src/lib.rs" "$dir/src/main.rs" "$dir"/src/bin/*.rs; do
      if [ -f "$f" ]; then printf '%s\n' "${f#"$dir"/}"; fi
    done
    grep -Eo 'path *= *"[^"]+\.rs"' "$manifest" | sed 's/.*"\(.*\)"/\1/' || true
  } | while read -r target; do
    mkdir -p "$DEST/$dir/$(dirname "$target")"
    case "$target" in
      src/lib.rs) : >"$DEST/$dir/$target" ;;
      *) echo 'fn main() {}' >"$DEST/$dir/$target" ;;
    esac
  done
done
find . -name '*.proto' -not -path './target/*' -not -path '*/node_modules/*' | while read -r proto; do
  mkdir -p "$DEST/$(dirname "$proto")"
  cp "$proto" "$DEST/$proto"
done
