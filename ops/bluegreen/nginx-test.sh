#!/usr/bin/env bash
# `nginx -t` on nginx/ both ways it runs: as Docker Compose mounts it (nginx/mode/ as committed)
# and as rendered for a native run (ops/bluegreen/native-nginx.sh). Each in a folder of its
# own, never /etc/nginx. Used by `make lint`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/compose/logs"
cp -r "$here/../../nginx/." "$work/compose/conf"
nginx -t -q -p "$work/compose/" -c "$work/compose/conf/nginx.conf" -e "$work/compose/logs/error.log"

"$here/native-nginx.sh" "$work/native" 8080 100 >/dev/null
nginx -t -q -p "$work/native/" -c "$work/native/conf/nginx.conf" -e "$work/native/logs/error.log"

echo "nginx -t: compose and native configurations are valid"
