#!/usr/bin/env bash
# Restarting on a large journal: `bash scripts/measure-journal-restart.sh [MEGABYTES]` (default
# 300). Writes a journal of that size — decisions and alert changes, as a hook flood leaves
# them, with a deploy among every thousand lines — starts `rollwatch run` on it, and prints the
# sidecar's peak resident memory (VmHWM) and how long it took to answer /healthz. The journal is
# compacted at start (streamed: what restores state is carried over) and read back streamed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/loopback.sh
megabytes=${1:-300}
bin=$(release_binary)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/state"
python3 - "$dir/state/journal.jsonl" "$megabytes" <<'PY'
import json, sys
path, megabytes = sys.argv[1], int(sys.argv[2])
pad = "x" * 400
with open(path, "w") as f:
    i = 0
    while f.tell() < megabytes << 20:
        i += 1
        if i % 1000 == 0:
            line = {"at": i, "event": "deploy", "from": f"v{i - 1000}", "to": f"v{i}", "source": "hook"}
        elif i % 2:
            line = {"at": i, "event": "alerts", "alerts": [{"alert": f'ALERTS{{alertname="Flood",n="{i}",pad="{pad}"}}', "firing": True}]}
        else:
            line = {"at": i, "event": "decision", "profile": "p", "outcome": "monitor", "path": [], "pad": pad}
        f.write(json.dumps(line) + "\n")
PY
echo "journal: $(du -m "$dir/state/journal.jsonl" | cut -f1) MB, $(wc -l < "$dir/state/journal.jsonl") lines"
serve_health "$dir"
rwport=$(free_port)
down_profile "$dir/profile.toml"
cat > "$dir/rollwatch.toml" <<TOML
profiles = ["profile.toml"]
state_dir = "$dir/state"
listen = "127.0.0.1:$rwport"
eval_interval = "1s"

[[target]]
name = "api"
kind = "health"
url = "http://127.0.0.1:$port/health"
interval = "1s"
TOML
started=$(date +%s.%N)
"$bin" run -c "$dir/rollwatch.toml" 2>"$dir/rollwatch.log" &
pid=$!
answered=
for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$rwport/healthz" >/dev/null && { answered=1; break; }; sleep 0.05; done
ready=$(date +%s.%N)
if [ -z "$answered" ]; then
  echo "rollwatch never answered /healthz within 60 s; its log:" >&2
  cat "$dir/rollwatch.log" >&2
  exit 1
fi
echo "answering /healthz after $(python3 -c "print(f'{$ready - $started:.2f}')") s"
echo "peak RSS: $(peak_rss $pid)"
if [ -f "$dir/state/journal.1.jsonl" ]; then
  echo "after compaction: journal $(du -k "$dir/state/journal.jsonl" | cut -f1) KB, rotated $(du -m "$dir/state/journal.1.jsonl" | cut -f1) MB"
else
  echo "not compacted (compaction starts above 64 MiB): the journal was read back streaming"
fi
kill -TERM "$pid"; wait "$pid"
