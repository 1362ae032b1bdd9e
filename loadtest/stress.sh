#!/usr/bin/env bash
# make stress: the original scenario's shape at rising rates (open model, k6), each a
# fresh service and event, to find the highest rate held with 0 failed and p99 <= P99_MS,
# and how 10x the original (28,000/s offered) goes. One line per rate, then a table.
#
# Settings (environment): STRESS_RATES ("2800 4000 5000 6000 8000 28000"),
# STRESS_DURATION (20s), QUANTITY (100000000: the event never sells out, every request
# issues), P99_MS (25), MAX_VUS (3000).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
RATES=${STRESS_RATES:-2800 4000 5000 6000 8000 28000}
DURATION=${STRESS_DURATION:-20s}
RESULTS=loadtest/results/stress-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS"
table="| offered/s | achieved/s | dropped | failed | p50 ms | p95 ms | p99 ms | issued = rows | verdict |\n|---|---|---|---|---|---|---|---|---|"
for rate in $RATES; do
  echo "stress: $rate req/s for $DURATION"
  .venv/bin/python loadtest/run.py --rate "$rate" --duration "$DURATION" \
    --quantity "${QUANTITY:-100000000}" --max-vus "${MAX_VUS:-3000}" --no-chart \
    --results "$RESULTS" >"$RESULTS/run-$rate.log" 2>&1 || true
  json=$(ls -td "$RESULTS"/*-k6-constant | head -1)/results.json
  line=$(.venv/bin/python - "$json" "$rate" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ok = "PASS" if r["passed"] else "FAIL"
print(f"| {int(sys.argv[2]):,} | {r['achieved']:,.0f} | {r['dropped']:,} | {r['failed']:,} | {r['p50']:.2f} "
      f"| {r['p95']:.2f} | {r['p99']:.2f} | {r['issued']:,} | {ok} |")
PY
)
  echo "stress: $line"
  table="$table\n$line"
done
printf "%b\n" "$table" | tee "$RESULTS/summary.md"
echo "stress: done; results in $RESULTS"
