#!/usr/bin/env bash
# Blue/green switch of coupon-service behind nginx.
#
#   ops/bluegreen/switch.sh blue|green   make that colour take the traffic
#   ops/bluegreen/switch.sh next         the colour that is not active (what a deploy does)
#   ops/bluegreen/switch.sh status       the active colour and whether each colour is ready
#
# A switch: start the colour (unless it runs already), wait at most READY_TIMEOUT_S for its
# /ready (else stop it and refuse: traffic stays where it is), `nginx -t`, then point nginx at
# the colour in one atomic step (create or remove the marker nginx/upstream/active-green, which
# nginx reads per request: no reload, so no client connection is closed); then ask /ready
# through nginx CHECKS times, CHECK_INTERVAL_S apart: one failure points nginx back and stops
# the new colour. Last, the old colour gets SIGTERM and DRAIN_TIMEOUT_S to answer what it
# holds and store its buffered issues. Switching to the active colour while it answers is a
# no-op. One switch at a time (a lock). Exit 0: traffic is on the colour asked for; 1: refused
# or rolled back.
#
# DEPLOY_MODE=compose (default): the stack of docker-compose.yml; the colours are its services
#   blue and green (`docker compose up -d --no-deps COLOUR`, COUPON_TAG picks the image), the
#   marker is in UPSTREAM_DIR (nginx/upstream/, mounted into nginx). NGINX_URL: nginx as this
#   host reaches it (http://127.0.0.1:${NGINX_PORT:-8080}). COMPOSE: the compose command (docker
#   compose), with its -f and -p options where needed.
# DEPLOY_MODE=native: processes on 127.0.0.1. NGINX_PREFIX: a prefix made by
#   ops/bluegreen/native-nginx.sh (nginx runs with -p NGINX_PREFIX); BLUE_PORT, GREEN_PORT
#   (8001, 8002); START_COMMAND (coupon-service): how a colour starts, run with PORT and HOST
#   set and this environment (ADMIN_TOKEN, DATABASE_URL, ...); a colour's pid and log are
#   RUN_DIR/COLOUR.pid and RUN_DIR/COLOUR.log (RUN_DIR: NGINX_PREFIX/run). A colour that runs
#   already (its pid alive) is used as it is. NGINX_BIN: the nginx binary (nginx).
#
# Settings: READY_TIMEOUT_S (60), CHECKS (3), CHECK_INTERVAL_S (1), GRACEFUL_TIMEOUT_S (60),
# DRAIN_TIMEOUT_S (2 x GRACEFUL_TIMEOUT_S + 10: the service waits that long for requests, then
# again for its buffer).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

mode=${DEPLOY_MODE:-compose}
ready_timeout_s=${READY_TIMEOUT_S:-60}
checks=${CHECKS:-3}
check_interval_s=${CHECK_INTERVAL_S:-1}
graceful_timeout_s=${GRACEFUL_TIMEOUT_S:-60}
drain_timeout_s=${DRAIN_TIMEOUT_S:-$((2 * ${graceful_timeout_s%.*} + 10))}

say() { printf 'switch: %s\n' "$*"; }
die() {
    printf 'switch: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }

case $mode in
compose)
    read -r -a compose <<<"${COMPOSE:-docker compose}"
    state_dir=${UPSTREAM_DIR:-$root/nginx/upstream}
    nginx_url=${NGINX_URL:-http://127.0.0.1:${NGINX_PORT:-8080}}
    ;;
native)
    [[ -n ${NGINX_PREFIX:-} ]] || die "DEPLOY_MODE=native needs NGINX_PREFIX (see ops/bluegreen/native-nginx.sh)"
    prefix=$(cd "$NGINX_PREFIX" && pwd)
    nginx_conf=$prefix/conf/nginx.conf
    state_dir=$prefix/conf/upstream
    run_dir=${RUN_DIR:-$prefix/run}
    mkdir -p "$run_dir"
    if [[ -z ${NGINX_URL:-} ]]; then
        listen=$(sed -n 's/^listen \([0-9.]*:[0-9]*\);$/\1/p' "$prefix/conf/mode/server.conf")
        [[ -n $listen ]] || die "cannot read nginx's address from $prefix/conf/mode/server.conf; set NGINX_URL"
        NGINX_URL=http://$listen
    fi
    nginx_url=$NGINX_URL
    ;;
*)
    die "DEPLOY_MODE must be compose or native, not '$mode'"
    ;;
esac

[[ -d $state_dir ]] || die "no folder $state_dir for the switch's marker"
marker=$state_dir/active-green

port_of() {
    if [[ $1 == blue ]]; then echo "${BLUE_PORT:-8001}"; else echo "${GREEN_PORT:-8002}"; fi
}

other_of() {
    if [[ $1 == blue ]]; then echo green; else echo blue; fi
}

active_colour() {
    if [[ -e $marker ]]; then echo green; else echo blue; fi
}

pid_of() {
    local pidfile=$run_dir/$1.pid pid
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# The colour's own /ready, not through nginx.
colour_ready() {
    if [[ $mode == native ]]; then
        curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$(port_of "$1")/ready" 2>/dev/null
    else
        "${compose[@]}" exec -T "$1" python -c \
            'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8000/ready", timeout=2)' \
            >/dev/null 2>&1
    fi
}

# /ready through nginx, answered by the colour named (nginx adds X-Coupon-Colour).
ready_through_nginx() {
    local headers
    headers=$(curl -fsS -m 2 -D - -o /dev/null "$nginx_url/ready" 2>/dev/null) || return 1
    grep -qi "^x-coupon-colour: $1"$'\r'"\{0,1\}$" <<<"$headers"
}

where_to_look() {
    if [[ $mode == compose ]]; then
        echo "docker compose logs $1"
    elif [[ $1 == nginx ]]; then
        echo "$prefix/logs/error.log"
    else
        echo "$run_dir/$1.log"
    fi
}

start_colour() {
    local colour=$1 port pid
    if [[ $mode == compose ]]; then
        say "starting $colour (image ${COUPON_IMAGE:-coupon-service}:${COUPON_TAG:-latest})"
        "${compose[@]}" up -d --no-deps "$colour"
        return
    fi
    if pid=$(pid_of "$colour"); then
        say "$colour runs already (pid $pid)"
        return
    fi
    port=$(port_of "$colour")
    say "starting $colour on 127.0.0.1:$port: ${START_COMMAND:-coupon-service}"
    # setsid: the colour outlives this script and is not hit by signals meant for it; 9>&-:
    # it must not hold the switch lock.
    PORT=$port HOST=127.0.0.1 setsid bash -c "exec ${START_COMMAND:-coupon-service}" \
        >>"$run_dir/$colour.log" 2>&1 </dev/null 9>&- &
    echo $! >"$run_dir/$colour.pid"
}

wait_ready() {
    local colour=$1 deadline=$((SECONDS + ready_timeout_s))
    until colour_ready "$colour"; do
        if [[ $mode == native ]] && ! pid_of "$colour" >/dev/null; then
            say "$colour exited while starting; last lines of $run_dir/$colour.log:"
            tail -n 20 "$run_dir/$colour.log" >&2 || true
            return 1
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

nginx_cmd() {
    if [[ $mode == native ]]; then
        "${NGINX_BIN:-nginx}" -p "$prefix/" -c "$nginx_conf" -e "$prefix/logs/error.log" "$@"
    else
        "${compose[@]}" exec -T nginx nginx "$@"
    fi
}

# Point nginx at a colour in one step: rename(2) of the marker into place, or unlink(2).
set_marker() {
    local tmp
    if [[ $1 == green ]]; then
        tmp=$(mktemp "$state_dir/.switch.XXXXXX")
        echo "green since $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$tmp"
        chmod 644 "$tmp"
        mv -f "$tmp" "$marker"
    else
        rm -f "$marker"
    fi
}

# Point nginx at a colour once `nginx -t` passes (the colours' upstreams are in its
# configuration); else leave the marker as it is and fail.
point_nginx_at() {
    nginx_cmd -t -q || return 1
    set_marker "$1"
}

drain_colour() {
    local colour=$1 pid deadline
    say "draining $colour: SIGTERM, up to ${drain_timeout_s}s to answer and store what it holds"
    if [[ $mode == compose ]]; then
        "${compose[@]}" stop -t "$drain_timeout_s" "$colour"
        return
    fi
    if ! pid=$(pid_of "$colour"); then
        say "$colour is not running (no live pid in $run_dir/$colour.pid)"
        return
    fi
    kill -TERM "$pid"
    deadline=$((SECONDS + drain_timeout_s))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        # A second SIGTERM makes Sanic's manager stop its workers at once; the issues they still
        # held are in Redis's records, and the next reconcile pass stores them.
        say "warning: $colour (pid $pid) still runs after ${drain_timeout_s}s; sending SIGTERM again"
        kill -TERM "$pid" 2>/dev/null || true
        sleep 5
    fi
    rm -f "$run_dir/$colour.pid"
}

status() {
    local active colour state
    active=$(active_colour)
    echo "active: $active (marker $marker)"
    for colour in blue green; do
        if colour_ready "$colour"; then state=ready; else state="not ready"; fi
        echo "$colour: $state"
    done
    if ready_through_nginx "$active"; then
        echo "nginx ($nginx_url): serving $active"
    else
        echo "nginx ($nginx_url): not serving $active"
    fi
}

switch_to() {
    local target=$1 active check
    active=$(active_colour)

    if [[ $active == "$target" ]] && ready_through_nginx "$target"; then
        say "$target is active and ready; nothing to do"
        return 0
    fi

    start_colour "$target"
    say "waiting up to ${ready_timeout_s}s for $target's /ready"
    if ! wait_ready "$target"; then
        # It takes no traffic; stopping it lets the next attempt start it afresh.
        [[ $active == "$target" ]] || drain_colour "$target" >/dev/null
        die "refused: $target is not ready after ${ready_timeout_s}s; traffic stays on $active (look at $(where_to_look "$target"))"
    fi

    say "pointing nginx at $target"
    if ! point_nginx_at "$target"; then
        [[ $active == "$target" ]] || drain_colour "$target" >/dev/null
        die "refused: nginx -t fails; traffic stays on $active (look at $(where_to_look nginx))"
    fi

    for ((check = 1; check <= checks; check++)); do
        sleep "$check_interval_s"
        if ! ready_through_nginx "$target"; then
            if [[ $active == "$target" ]]; then
                die "$target does not answer through nginx ($nginx_url/ready); look at $(where_to_look "$target")"
            fi
            point_nginx_at "$active" || set_marker "$active"
            drain_colour "$target" >/dev/null
            die "rolled back to $active: $target failed /ready through nginx after the switch (check $check of $checks); look at $(where_to_look "$target")"
        fi
    done

    if [[ $active != "$target" ]]; then
        drain_colour "$active"
        say "done: traffic on $target, $active drained"
    else
        say "done: traffic on $target"
    fi
}

main() {
    local target=${1:-}
    case $target in
    -h | --help)
        usage
        return 0
        ;;
    status)
        status
        return 0
        ;;
    next)
        target=$(other_of "$(active_colour)")
        ;;
    blue | green) ;;
    *)
        usage >&2
        return 2
        ;;
    esac

    # One switch at a time: a second one waits for the first.
    exec 9>"$state_dir/.switch.lock"
    flock 9
    switch_to "$target"
}

main "$@"
