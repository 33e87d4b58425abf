#!/bin/sh
# Rebuilds ../assets/yjs-partykit.js, the browser bundle of yjs + y-partykit's provider that the
# collaborative text page (`/text`) loads. The bundle is committed, so building partyline needs
# no npm; run this only to change the pinned versions in package.json:
#
#   cd yjs/web && npm ci && sh build.sh
set -eu
cd "$(dirname "$0")"
v() { node -p "require('./node_modules/$1/package.json').version"; }
banner="/* yjs $(v yjs), y-partykit $(v y-partykit), y-protocols $(v y-protocols), lib0 $(v lib0): MIT licensed, (c) their authors. Bundled by yjs/web/build.sh with esbuild $(v esbuild). */"
./node_modules/.bin/esbuild entry.js --bundle --minify --format=iife --global-name=YPartyKit \
  --target=es2020 --legal-comments=eof --banner:js="$banner" --outfile=../assets/yjs-partykit.js
