#!/usr/bin/env bash
# A 600,000-series target polled every second beside a target that goes down:
# `bash scripts/measure-flood.sh [SECONDS_BEFORE_THE_OUTAGE]` (default 30). Series no rule reads
# are dropped as they are parsed, so the big target costs parse time, not memory. Prints the
# sidecar's peak resident memory (VmHWM), how long after the outage the rollback step ran, and
# the evaluations made against the seconds elapsed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/loopback.sh
before=${1:-30}
bin=$(release_binary)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

# 600,000 series no rule reads, inside the default 10 MiB max_body.
python3 - "$dir/metrics" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(600_000):
        f.write(f'j{{i="{i}"}} 1\n')
PY
serve_health "$dir"
rwport=$(free_port)
down_profile "$dir/profile.toml"
printf '\n[[procedure.rollback]]\nrun = "undo"\n' >> "$dir/profile.toml"
cat > "$dir/rollwatch.toml" <<TOML
profiles = ["profile.toml"]
state_dir = "$dir/state"
listen = "127.0.0.1:$rwport"
eval_interval = "1s"

[[target]]
name = "api"
kind = "health"
url = "http://127.0.0.1:$port/health"
interval = "250ms"
timeout = "900ms"

[[target]]
name = "big"
kind = "prometheus"
url = "http://127.0.0.1:$port/metrics"
interval = "1s"
timeout = "900ms"

[actions.undo]
kind = "exec"
argv = ["/bin/sh", "-c", "date +%s.%N > $dir/acted"]
TOML
"$bin" run -c "$dir/rollwatch.toml" 2>"$dir/rollwatch.log" &
pid=$!
started=$(date +%s.%N)
sleep "$before"
rm "$dir/health"
down=$(date +%s.%N)
for _ in $(seq 300); do [ -s "$dir/acted" ] && break; sleep 0.05; done
acted=$(cat "$dir/acted" 2>/dev/null || echo never)
now=$(date +%s.%N)
metrics=$(curl -s "http://127.0.0.1:$rwport/metrics")
echo "peak RSS: $(peak_rss $pid)"
echo "rollback step ran $(python3 -c "print('never' if '$acted' == 'never' else f'{$acted - $down:.2f} s')") after the outage"
echo "evaluations: $(echo "$metrics" | grep -E '^rollwatch_ticks_total' | awk '{print $2}') in $(python3 -c "print(f'{$now - $started:.1f}')") s"
echo "$metrics" | grep -E '^rollwatch_(series |target_series_dropped_total\{target="big"\}|target_polls_total\{target="big"\})'
kill -TERM "$pid"; wait "$pid"
