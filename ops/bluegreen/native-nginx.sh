#!/usr/bin/env bash
# Render nginx/ for running nginx natively (no containers) under its own prefix.
#
#   ops/bluegreen/native-nginx.sh PREFIX [PORT] [ISSUE_RATE] [ISSUE_BURST]
#
# Copies nginx/ into PREFIX/conf and writes PREFIX/conf/mode/ for this machine: pid, logs and
# temp files under PREFIX, listen on 127.0.0.1:PORT (8080), ISSUE_RATE requests/s per client IP
# on POST /events/{id}/issue (100; 0: no limit) past a burst of ISSUE_BURST (20), the colours
# on 127.0.0.1:BLUE_PORT and 127.0.0.1:GREEN_PORT (8001, 8002), the switch's marker in
# PREFIX/conf/upstream. Then:
#
#   nginx -p PREFIX/ -c PREFIX/conf/nginx.conf -e PREFIX/logs/error.log      # start
#   DEPLOY_MODE=native NGINX_PREFIX=PREFIX ops/bluegreen/switch.sh blue     # first deploy
#
# Several service hosts in one colour: BLUE_SERVERS or GREEN_SERVERS, comma-separated
# host:port, replace that colour's one server; nginx spreads requests over them round-robin.
# You start those instances yourself: switch.sh starts and stops one process per colour.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

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
burst=${4:-20}
blue_port=${BLUE_PORT:-8001}
green_port=${GREEN_PORT:-8002}

for value in "$port" "$rate" "$burst" "$blue_port" "$green_port"; do
    [[ $value =~ ^[0-9]+$ ]] || { echo "native-nginx: not a number: '$value'" >&2; exit 2; }
done

blue_servers=${BLUE_SERVERS:-127.0.0.1:$blue_port}
green_servers=${GREEN_SERVERS:-127.0.0.1:$green_port}

# One `server` line per host:port of a comma-separated list. max_fails=0: nginx never sets an
# instance aside; one that refuses a connection is passed over for the request (coupon.conf).
server_lines() {
    local list=$1 name=$2 server
    local -a servers
    IFS=, read -r -a servers <<<"$list"
    ((${#servers[@]} > 0)) || { echo "native-nginx: $name is empty" >&2; exit 2; }
    for server in "${servers[@]}"; do
        [[ $server =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] ||
            { echo "native-nginx: $name: not host:port: '$server'" >&2; exit 2; }
        printf '    server %s max_fails=0;\n' "$server"
    done
}
blue_upstream=$(server_lines "$blue_servers" BLUE_SERVERS)
green_upstream=$(server_lines "$green_servers" GREEN_SERVERS)

mkdir -p "$prefix/conf/mode" "$prefix/conf/upstream" "$prefix/logs" "$prefix/tmp"
cp "$source_dir/nginx.conf" "$source_dir/coupon.conf" "$prefix/conf/"

# Run as root, nginx's workers would become nobody, who may not enter a prefix in a folder only
# root may enter (a mktemp -d) and then never sees the switch's marker: keep them as root.
user_line="# workers run as the user who starts nginx"
if ((EUID == 0)); then user_line="user root;"; fi

cat >"$prefix/conf/mode/main.conf" <<CONF
# native: everything under $prefix
$user_line
pid $prefix/logs/nginx.pid;
error_log $prefix/logs/error.log warn;
CONF

if ((rate > 0)); then
    zone="limit_req_zone \$issue_limit_key zone=issue_per_ip:10m rate=${rate}r/s;"
    limit="limit_req zone=issue_per_ip burst=$burst nodelay;"
    said="$rate requests/s per IP past a burst of $burst"
else
    zone="# no per-IP issue limit (rendered with ISSUE_RATE 0)"
    limit=$zone
    said="no limit"
fi

cat >"$prefix/conf/mode/http.conf" <<CONF
# native: logs and temp files under $prefix; issue requests: $said.
access_log $prefix/logs/access.log coupon buffer=64k flush=1s;
client_body_temp_path $prefix/tmp/body;
proxy_temp_path $prefix/tmp/proxy;
fastcgi_temp_path $prefix/tmp/fastcgi;
uwsgi_temp_path $prefix/tmp/uwsgi;
scgi_temp_path $prefix/tmp/scgi;
$zone
map \$host \$coupon_green_marker {
    default $prefix/conf/upstream/active-green;
}
CONF

cat >"$prefix/conf/mode/issue_limit.conf" <<CONF
# native: $said.
$limit
CONF

cat >"$prefix/conf/mode/server.conf" <<CONF
# native: loopback only.
listen 127.0.0.1:$port;
CONF

cat >"$prefix/conf/mode/upstreams.conf" <<CONF
# native: the colours are processes on this machine (or the hosts BLUE_SERVERS and
# GREEN_SERVERS name).
upstream coupon_blue {
$blue_upstream
    keepalive 64;
    keepalive_timeout 30s;
}
upstream coupon_green {
$green_upstream
    keepalive 64;
    keepalive_timeout 30s;
}
CONF

echo "native-nginx: rendered $prefix/conf (listen 127.0.0.1:$port; blue $blue_servers, green $green_servers; issue: $said)"
