#!/usr/bin/env bash
# The fuzz campaign issue 9 asks for: 10 million executions each for the exposition and notation
# parsers, 30 minutes each for the other targets, two lanes at a time (one per core), at low
# priority. Prints one "target inputs seconds" line per run and keeps libFuzzer's logs.
#
#   bash scripts/fuzz-campaign.sh [LOGDIR]        # default: fuzz/logs
#   SECONDS_EACH=10 MINUTES=0 RUNS=100000 bash scripts/fuzz-campaign.sh   # a quick rehearsal
set -euo pipefail
cd "$(dirname "$0")/.."
logs=${1:-fuzz/logs}
seconds=$(( ${MINUTES:-30} * 60 ))
[ "$seconds" -gt 0 ] || seconds=${SECONDS_EACH:?MINUTES must be at least 1 (or set SECONDS_EACH)}
runs=${RUNS:-10000000}
mkdir -p "$logs"
export RUSTC_BOOTSTRAP=1
cargo fuzz build --release >/dev/null

run() { # target, libFuzzer limit
  local t=$1 limit=$2 start end
  mkdir -p "fuzz/corpus/$t"
  start=$(date +%s)
  nice -n 19 cargo fuzz run --release "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    "$limit" -print_final_stats=1 >"$logs/$t.log" 2>&1 || { echo "$t: FAILED (see $logs/$t.log)"; return 1; }
  end=$(date +%s)
  echo "$t $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$') $((end - start))"
}

lane_a() { run exposition "-runs=$runs" && for t in alertmanager promql deploy; do run "$t" "-max_total_time=$seconds"; done; }
lane_b() { run notation "-runs=$runs" && for t in profile config; do run "$t" "-max_total_time=$seconds"; done; }
lane_a & a=$!
lane_b & b=$!
wait $a && wait $b
