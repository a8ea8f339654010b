#!/usr/bin/env bash
# Screenshots of `/status` for the README, taken with headless Chromium: a healthy service (v1),
# then v2 failing 12% of its requests with the rollback in flight. `bash scripts/screenshots.sh [OUTDIR]`
# (default docs/). Needs chromium (Debian's package; scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/loopback.sh
out=${1:-docs}
mkdir -p "$out"
bin=$(release_binary)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
# A service that counts requests (1% failing; 12% once "$dir/bad" exists) and reports its
# version (v2 once bad, v1 again after the rollback below), on a free loopback port.
port=$(free_port)
rwport=$(free_port)
cat > "$dir/service.py" <<'PY'
import http.server, json, os, sys, threading, time
dir, port = sys.argv[1], int(sys.argv[2])
counts = {"ok": 0.0, "err": 0.0}
def traffic():
    while True:
        share = 0.12 if os.path.exists(f"{dir}/bad") else 0.01
        counts["ok"] += 40 * (1 - share); counts["err"] += 40 * share
        time.sleep(0.1)
threading.Thread(target=traffic, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == "/health":
            version = "v2" if os.path.exists(f"{dir}/bad") else "v1"
            body = json.dumps({"status": "ok", "version": version}).encode()
        else:
            body = (f'http_requests_total{{code="200"}} {counts["ok"]}\n'
                    f'http_requests_total{{code="500"}} {counts["err"]}\n').encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
python3 "$dir/service.py" "$dir" "$port" &
wait_for "http://127.0.0.1:$port/health"
cat > "$dir/profile.toml" <<'TOML'
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "5s", 20)'

[[rule]]
name = "error-rate-critical"
when = 'error_rate > 0.05'

[[rule]]
name = "error-rate-elevated"
when = 'error_rate > 0.02'
for = "3s"

[[decide]]
ask = "Is error rate > 5%?"
if = 'firing("error-rate-critical")'
then = "rollback"

[[decide]]
ask = "Is error rate > 2% for 3s?"
if = 'firing("error-rate-elevated")'
then = "consider"

[[procedure.rollback]]
announce = "rollback_in_progress"

[[procedure.rollback]]
run = "undo"

[[procedure.rollback]]
announce = "rollback_complete"
TOML
cat > "$dir/rollwatch.toml" <<TOML
profiles = ["profile.toml"]
state_dir = "$dir/state"
listen = "127.0.0.1:$rwport"
eval_interval = "500ms"
version = { target = "api", field = "version" }

[[target]]
name = "api"
kind = "health"
url = "http://127.0.0.1:$port/health"
interval = "500ms"

[[target]]
name = "api-metrics"
kind = "prometheus"
url = "http://127.0.0.1:$port/metrics"
interval = "500ms"

[policy]
bake = "3s"

[channels.console]
kind = "console"

[actions.undo]
kind = "exec"
argv = ["/bin/sh", "-c", "sleep 30; rm -f $dir/bad"]
TOML
"$bin" run -c "$dir/rollwatch.toml" >"$dir/stdout" 2>"$dir/rollwatch.log" &
wait_for "http://127.0.0.1:$rwport/healthz"
shot() {
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$dir/chromium" \
    --window-size=1000,1300 --screenshot="$1" "http://127.0.0.1:$rwport/status" 2>/dev/null
  echo "wrote $1"
}
sleep 12   # v1 bakes; the sparklines fill
shot "$out/status-healthy.png"
touch "$dir/bad"   # v2 is deployed and fails 12% of requests
for _ in $(seq 150); do
  curl -s "http://127.0.0.1:$rwport/status" | grep -q '"phase":"steps"' && break
  sleep 0.2
done
sleep 3
shot "$out/status-rolling-back.png"
