#!/usr/bin/env bash
# Measures the sidecar's resident memory with 10 targets polled every second, after a given time
# (default 10 minutes): `bash scripts/measure-memory.sh [SECONDS]`. The targets are a loopback
# HTTP server (python3 -m http.server) serving a 1,000-series exposition; the profile is
# SOLVEREIGN. Prints VmRSS (and VmHWM, the peak) at 1 minute and at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/loopback.sh
secs=${1:-600}
bin=$(release_binary)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

# 1,000 series: counters for 100 handlers x 5 codes, a 10-bucket histogram for 50 handlers.
python3 - "$dir/metrics" <<'PY'
import sys
lines = ["# TYPE http_requests_total counter"]
for h in range(100):
    for code in ("200", "201", "404", "500", "503"):
        lines.append(f'http_requests_total{{handler="/api/h{h}",code="{code}"}} {h * 7 + len(code)}')
lines.append("# TYPE http_request_duration_seconds histogram")
for h in range(50):
    for i, le in enumerate(("0.01", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf")):
        lines.append(f'http_request_duration_seconds_bucket{{handler="/api/h{h}",le="{le}"}} {100 * (i + 1)}')
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
port=$(free_port)
rwport=$(free_port)
(cd "$dir" && python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
wait_for "http://127.0.0.1:$port/metrics"
cp rules/solvereign.toml "$dir/"
{
  echo 'profiles = ["solvereign.toml"]'
  echo "state_dir = \"$dir/state\""
  echo "listen = \"127.0.0.1:$rwport\""
  echo 'eval_interval = "1s"'
  for i in $(seq 1 10); do
    printf '[[target]]\nname = "t%s"\nkind = "prometheus"\nurl = "http://127.0.0.1:%s/metrics"\ninterval = "1s"\ntimeout = "900ms"\n' "$i" "$port"
  done
  for a in undo rollout-status health-ready version-check; do
    printf '[actions.%s]\nkind = "exec"\nargv = ["true"]\n' "$a"
  done
} > "$dir/rollwatch.toml"
"$bin" run -c "$dir/rollwatch.toml" 2>"$dir/rollwatch.log" &
pid=$!
rss() { grep -E 'VmRSS|VmHWM' "/proc/$pid/status" | tr -s ' ' | tr '\n' ' '; echo; }
sleep 60; echo "after 60 s: $(rss)"
sleep $((secs - 60)); echo "after $secs s: $(rss)"
echo "$(curl -s "http://127.0.0.1:$rwport/metrics" | grep -E '^rollwatch_(series|ticks_total|target_polls_total\{target="t1"\})')"
kill -TERM "$pid"; wait "$pid"
