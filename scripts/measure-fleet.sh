#!/usr/bin/env bash
# One rollwatch watching a fleet: `bash scripts/measure-fleet.sh [DEPLOYMENTS] [SECONDS]`
# (default 500 deployments, 120 s). Each deployment has 2 targets (a health check and a version
# endpoint) polled every 5 s against one loopback simulator, evaluation every 5 s. After
# SECONDS, deployment d1's health goes down; the script waits for its rollback step. Prints the
# sidecar's peak resident memory (VmHWM), its CPU over the steady part (share of one core), the
# evaluations made against those due, and how long after the outage the rollback step ran.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/loopback.sh
. scripts/fleet-sim.sh
n=${1:-500}
seconds=${2:-120}
bin=$(release_binary)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

fleet_simulator "$dir"
fleet_deployments "$dir" "$n" "$port"
rwport=$(free_port)
cat > "$dir/rollwatch.toml" <<TOML
deployments = ["deploy/*.toml"]
state_dir = "$dir/state"
listen = "127.0.0.1:$rwport"
eval_interval = "5s"
TOML
"$bin" check "$dir/rollwatch.toml" >/dev/null
"$bin" run -c "$dir/rollwatch.toml" >"$dir/stdout" 2>"$dir/rollwatch.log" &
pid=$!
started=$(date +%s.%N)
wait_for "http://127.0.0.1:$rwport/healthz"
# CPU from here: the start (reading n configs, n journals) is not the steady state.
sleep 10
hz=$(getconf CLK_TCK)
cpu0=$(cpu_ticks $pid); t0=$(date +%s.%N)
sleep "$seconds"
cpu1=$(cpu_ticks $pid); t1=$(date +%s.%N)
touch "$dir/down-d1"
down=$(date +%s.%N)
for _ in $(seq 600); do [ -s "$dir/acted-d1" ] && break; sleep 0.05; done
acted=$(cat "$dir/acted-d1" 2>/dev/null || echo never)
now=$(date +%s.%N)
metrics=$(curl -s "http://127.0.0.1:$rwport/metrics")
echo "deployments: $n, targets: $((2 * n)), polled every 5 s, evaluated every 5 s"
echo "peak RSS: $(peak_rss $pid)"
python3 -c "print(f'CPU over {$t1 - $t0:.0f} s of steady state: {100 * ($cpu1 - $cpu0) / $hz / ($t1 - $t0):.1f}% of one core')"
echo "$metrics" | python3 -c "
import sys, re
ticks = [int(float(l.split()[-1])) for l in sys.stdin if l.startswith('rollwatch_ticks_total{')]
up = $now - $started
due = int(up // 5)
print(f'evaluations per deployment: min {min(ticks)}, max {max(ticks)} in {up:.0f} s ({due} or {due + 1} due); deployments reporting: {len(ticks)}')
"
echo "rollback step in d1 ran $(python3 -c "print('never' if '$acted' == 'never' else f'{$acted - $down:.2f} s')") after the outage (a 5 s poll and a 5 s evaluation: at most ~10 s)"
others=$(ls "$dir" | grep -c '^acted-' || true)
echo "deployments that acted: $others (only d1 should)"
echo "failed polls: $(echo "$metrics" | grep -E '^rollwatch_target_errors_total' | awk '{s += $2} END {print s + 0}') (d1's outage included)"
kill -TERM "$pid"; wait "$pid"
