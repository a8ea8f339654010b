#!/usr/bin/env bash
# Screenshots of `/status` for the README, taken with headless Chromium: a healthy service, then
# the same service down with its rollback in flight. `bash scripts/screenshots.sh [OUTDIR]`
# (default docs/). Needs chromium (Debian's package; scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/loopback.sh
out=${1:-docs}
mkdir -p "$out"
bin=$(release_binary)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
serve_health "$dir"
rwport=$(free_port)
down_profile "$dir/profile.toml"
cat >> "$dir/profile.toml" <<'TOML'

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

[[target]]
name = "api"
kind = "health"
url = "http://127.0.0.1:$port/health"
interval = "500ms"

[channels.console]
kind = "console"

[actions.undo]
kind = "exec"
argv = ["/bin/sleep", "60"]
TOML
"$bin" run -c "$dir/rollwatch.toml" >"$dir/stdout" 2>"$dir/rollwatch.log" &
wait_for "http://127.0.0.1:$rwport/healthz"
shot() {
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$dir/chromium" \
    --window-size=1000,1300 --screenshot="$1" "http://127.0.0.1:$rwport/status" 2>/dev/null
  echo "wrote $1"
}
sleep 8   # a few evaluations for the sparklines
shot "$out/status-healthy.png"
rm "$dir/health"
for _ in $(seq 100); do
  curl -s "http://127.0.0.1:$rwport/status" | grep -q '"phase":"steps"' && break
  sleep 0.2
done
sleep 2
shot "$out/status-rolling-back.png"
