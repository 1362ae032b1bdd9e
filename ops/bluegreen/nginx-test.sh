#!/usr/bin/env bash
# `nginx -t` on nginx/ both ways it runs: as Docker Compose mounts it (nginx/mode/ as committed)
# and as rendered for a native run (ops/bluegreen/native-nginx.sh), with one server per colour
# and with several (BLUE_SERVERS). Each in a folder of its own, never /etc/nginx. Used by
# `make lint`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/compose/logs"
cp -r "$here/../../nginx/." "$work/compose/conf"
nginx -t -q -p "$work/compose/" -c "$work/compose/conf/nginx.conf" -e "$work/compose/logs/error.log"

"$here/native-nginx.sh" "$work/native" 8080 100 >/dev/null
nginx -t -q -p "$work/native/" -c "$work/native/conf/nginx.conf" -e "$work/native/logs/error.log"

BLUE_SERVERS=127.0.0.1:8001,127.0.0.1:8003 "$here/native-nginx.sh" "$work/hosts" 8080 100 >/dev/null
nginx -t -q -p "$work/hosts/" -c "$work/hosts/conf/nginx.conf" -e "$work/hosts/logs/error.log"

echo "nginx -t: compose and native configurations (one and several servers a colour) are valid"
