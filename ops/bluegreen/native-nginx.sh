#!/usr/bin/env bash
# Render nginx/ for running nginx natively (no containers) under its own prefix.
#
#   ops/bluegreen/native-nginx.sh PREFIX [PORT] [ISSUE_RATE]
#
# Copies nginx/ into PREFIX/conf, writes PREFIX/conf/mode/ for this machine (pid, logs and temp
# files under PREFIX, listen on 127.0.0.1:PORT, ISSUE_RATE requests/s per client IP on
# POST /events/{id}/issue) and an upstream/active.conf on blue. Then:
#
#   nginx -p PREFIX -c PREFIX/conf/nginx.conf          # start
#   DEPLOY_MODE=native NGINX_PREFIX=PREFIX ops/bluegreen/switch.sh blue
#
# Environment: BLUE_PORT, GREEN_PORT (8001, 8002): where the colours listen on 127.0.0.1.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    usage
    [[ $# -ge 1 ]] && exit 0
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/../../nginx" && pwd)
prefix=$(mkdir -p "$1" && cd "$1" && pwd)
port=${2:-8080}
rate=${3:-100}
blue_port=${BLUE_PORT:-8001}

for value in "$port" "$rate" "$blue_port"; do
    [[ $value =~ ^[0-9]+$ ]] || { echo "native-nginx: not a number: '$value'" >&2; exit 2; }
done

mkdir -p "$prefix/conf/mode" "$prefix/conf/upstream" "$prefix/logs" "$prefix/tmp"
cp "$source_dir/nginx.conf" "$source_dir/coupon.conf" "$prefix/conf/"

cat >"$prefix/conf/mode/main.conf" <<CONF
# native: everything under $prefix
pid $prefix/logs/nginx.pid;
error_log $prefix/logs/error.log warn;
CONF

cat >"$prefix/conf/mode/http.conf" <<CONF
# native: logs and temp files under $prefix; $rate requests/s per client IP on issue.
access_log $prefix/logs/access.log coupon buffer=64k flush=1s;
client_body_temp_path $prefix/tmp/body;
proxy_temp_path $prefix/tmp/proxy;
fastcgi_temp_path $prefix/tmp/fastcgi;
uwsgi_temp_path $prefix/tmp/uwsgi;
scgi_temp_path $prefix/tmp/scgi;
limit_req_zone \$issue_limit_key zone=issue_per_ip:10m rate=${rate}r/s;
CONF

cat >"$prefix/conf/mode/server.conf" <<CONF
# native: loopback only.
listen 127.0.0.1:$port;
CONF

if [[ ! -f $prefix/conf/upstream/active.conf ]]; then
    cat >"$prefix/conf/upstream/active.conf" <<CONF
# active colour: blue
# Written by ops/bluegreen/native-nginx.sh; ops/bluegreen/switch.sh rewrites it.
upstream coupon_active {
    server 127.0.0.1:$blue_port max_fails=0;
    keepalive 64;
    keepalive_timeout 30s;
}
map \$host \$coupon_colour {
    default "blue";
}
CONF
fi

echo "native-nginx: rendered $prefix/conf (listen 127.0.0.1:$port, issue rate ${rate}r/s per IP)"
