#!/usr/bin/env bash
# make bench: a short closed-loop run with wrk against /health and /events/{id}/issue in
# the same run (same server, same machine), alternating the two for BENCH_ROUNDS rounds so
# a noisy neighbour hits both alike, printing the median rates, their ratio and a CPU-speed
# yardstick (the ratio depends on the host), then checking every issue was stored once.
#
# Settings (environment): BENCH_WORKERS (2), BENCH_ROUNDS (3), BENCH_DURATION (5s per run),
# BENCH_CONNECTIONS (64), BENCH_THREADS (1), BENCH_PORT (a free port).
# Uses the DATABASE_URL / REDIS_URL databases; other service settings pass through.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
command -v wrk >/dev/null || { echo "bench: wrk is missing; install it with: apt-get install -y wrk"; exit 1; }

BIN=.venv/bin
WORKERS=${BENCH_WORKERS:-2}
DURATION=${BENCH_DURATION:-5s}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-1}
PORT=${BENCH_PORT:-$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
URL="http://127.0.0.1:$PORT"
TOKEN=${ADMIN_TOKEN:-bench-admin-token-0123456789}
LOG=$(mktemp -t coupon-bench.XXXXXX.log)

# A CPU-speed yardstick, taken before and after the rounds, so figures from different
# machines (or a neighbour's busy minute) can be told apart: the ratio depends on how fast
# the CPU runs Python relative to what a system call costs there.
yardstick() { "$BIN/python" -m timeit -n 20000 -r 5 "sum(range(1000))" | sed 's/^.*: \([0-9.]*\) usec.*/\1/'; }
before=$(yardstick)
echo "bench: CPU yardstick, python -m timeit \"sum(range(1000))\": $before µs"
echo "bench: starting coupon-service with $WORKERS workers on $URL (log: $LOG)"
ADMIN_TOKEN=$TOKEN WORKERS=$WORKERS PORT=$PORT HOST=127.0.0.1 LOG_LEVEL=WARNING \
  "$BIN/coupon-service" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "$URL/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "$URL/ready" >/dev/null || { echo "bench: the service did not become ready"; cat "$LOG"; exit 1; }

event=$(COUPON_URL=$URL ADMIN_TOKEN=$TOKEN "$BIN/couponctl" create "bench $(date -u +%FT%TZ)" 1000000000 --open \
  | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "bench: event $event opened (quantity 1,000,000,000)"

rate() { awk '/^Requests\/sec:/ {print $2}'; }
median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
health_rates=""
issue_rates=""
summary=""
for round in $(seq 1 "$ROUNDS"); do
  h=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$URL/health" | rate)
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s loadtest/wrk/issue.lua \
    "$URL/events/$event/issue" -- "run$$-$round")
  i=$(echo "$out" | rate)
  summary=$(echo "$out" | grep '^{')
  echo "bench: round $round/$ROUNDS: /health $h req/s, /issue $i req/s; issue answers $summary"
  health_rates="$health_rates $h"
  issue_rates="$issue_rates $i"
done
after=$(yardstick)
health=$(echo $health_rates | median)
issue=$(echo $issue_rates | median)

# Every 201 must be stored: wait for the writer, then compare Redis and PostgreSQL.
stats=""
for _ in $(seq 1 100); do
  stats=$(COUPON_URL=$URL ADMIN_TOKEN=$TOKEN "$BIN/couponctl" stats "$event")
  drift=$(echo "$stats" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["drift"])')
  [[ "$drift" == "0" ]] && break
  sleep 0.1
done
issued=$(echo "$stats" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["issued_redis"])')
stored=$(echo "$stats" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["rows_stored"])')

# Verified below; close the event so it stops costing Redis memory and reconcile passes.
COUPON_URL=$URL ADMIN_TOKEN=$TOKEN "$BIN/couponctl" close "$event" >/dev/null
ratio=$("$BIN/python" -c "print(f'{$issue / $health:.2f}')")
echo "bench: issued in Redis $issued, rows stored $stored"
printf 'bench: %s, %s workers, wrk -t%s -c%s, median of %s x %s: /health %.0f req/s, /issue %.0f req/s, ratio %s (yardstick %s/%s µs)\n' \
  "$(date -u +%F)" "$WORKERS" "$THREADS" "$CONNECTIONS" "$ROUNDS" "$DURATION" "$health" "$issue" "$ratio" "$before" "$after"
[[ "$issued" == "$stored" ]] || { echo "bench: FAILED: $issued issued but $stored stored"; exit 1; }
