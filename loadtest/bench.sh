#!/usr/bin/env bash
# make bench: a short closed-loop run with wrk against /health and /events/{id}/issue in
# the same run (same server, same machine), printing both rates and their ratio, then
# checking that every issue was stored exactly once.
#
# Settings (environment): BENCH_WORKERS (2), BENCH_DURATION (10s), BENCH_CONNECTIONS (64),
# BENCH_THREADS (1), BENCH_PORT (a free port). Uses the DATABASE_URL / REDIS_URL databases.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
command -v wrk >/dev/null || { echo "bench: wrk is missing; install it with: apt-get install -y wrk"; exit 1; }

BIN=.venv/bin
WORKERS=${BENCH_WORKERS:-2}
DURATION=${BENCH_DURATION:-10s}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-1}
PORT=${BENCH_PORT:-$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
URL="http://127.0.0.1:$PORT"
TOKEN=${ADMIN_TOKEN:-bench-admin-token-0123456789}
LOG=$(mktemp -t coupon-bench.XXXXXX.log)

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
echo "bench: wrk -t$THREADS -c$CONNECTIONS -d$DURATION $URL/health"
health_out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$URL/health")
health=$(echo "$health_out" | rate)
echo "bench: wrk -t$THREADS -c$CONNECTIONS -d$DURATION -s loadtest/wrk/issue.lua $URL/events/$event/issue"
issue_out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s loadtest/wrk/issue.lua \
  "$URL/events/$event/issue" -- "run$$")
issue=$(echo "$issue_out" | rate)
summary=$(echo "$issue_out" | grep '^{')

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

ratio=$("$BIN/python" -c "print(f'{$issue / $health:.2f}')")
echo "bench: issue answers: $summary"
echo "bench: issued in Redis $issued, rows stored $stored"
printf 'bench: %s, %s workers, wrk -t%s -c%s -d%s: /health %.0f req/s, /issue %.0f req/s, ratio %s\n' \
  "$(date -u +%F)" "$WORKERS" "$THREADS" "$CONNECTIONS" "$DURATION" "$health" "$issue" "$ratio"
[[ "$issued" == "$stored" ]] || { echo "bench: FAILED: $issued issued but $stored stored"; exit 1; }
