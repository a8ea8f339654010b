#!/usr/bin/env bash
# Many deploys: `bash scripts/measure-deploys.sh [DEPLOYS]` (default 100000). Writes a journal of
# that many deploys through the hook (`POST /hooks/deploy`, each a new version, one a second), as
# the sidecar writes them — v1 baked at the start, the version halfway rolled back by rb-1 — then
# times `rollwatch versions` and `rollwatch history` on it and a start of `rollwatch run` until
# /healthz answers, with the sidecar's peak resident memory (VmHWM). Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/loopback.sh
deploys=${1:-100000}
bin=$(release_binary)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/state"
python3 - "$dir/state/journal.jsonl" "$deploys" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
t0 = 1_700_000_000_000
at = lambda i: t0 + i * 1000
with open(path, "w") as f:
    f.write(f'{{"at":{at(1)},"event":"deploy","from":null,"to":"v1","source":"first_sight"}}\n')
    f.write(f'{{"at":{at(1) + 600},"event":"version_baked","version":"v1","since":{at(1)}}}\n')
    for i in range(2, n + 1):
        f.write(f'{{"at":{at(i)},"event":"deploy","from":"v{i - 1}","to":"v{i}","source":"hook"}}\n')
        if i == n // 2:
            t = at(i)
            f.write(f'{{"at":{t + 100},"event":"rollback_started","rollback_id":"rb-1","profile":"profile","key":"profile@v{i}","version_from":"v{i}","target_version":"v1","level":null,"reason":"Is system down? YES","explanation":"Is system down? YES → rollback","firing":["down"],"approval_id":null,"deployed_at":{t}}}\n')
            f.write(f'{{"at":{t + 800},"event":"rollback_finished","rollback_id":"rb-1","result":"completed","duration_ms":700,"version_to":"v1","error":null}}\n')
PY
echo "journal: $(wc -l < "$dir/state/journal.jsonl") lines, $(du -k "$dir/state/journal.jsonl" | cut -f1) KB"
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
seconds() { python3 -c "print(f'{$2 - $1:.2f}')"; }
for command in versions history; do
  started=$(date +%s.%N)
  "$bin" "$command" -c "$dir/rollwatch.toml" > "$dir/$command.out"
  done_at=$(date +%s.%N)
  echo "rollwatch $command: $(seconds "$started" "$done_at") s, $(wc -l < "$dir/$command.out") lines printed"
done
head -1 "$dir/versions.out"
tail -1 "$dir/versions.out"
started=$(date +%s.%N)
"$bin" run -c "$dir/rollwatch.toml" 2>"$dir/rollwatch.log" >/dev/null &
pid=$!
answered=
for _ in $(seq 3000); do curl -sf "http://127.0.0.1:$rwport/healthz" >/dev/null && { answered=1; break; }; sleep 0.02; done
ready=$(date +%s.%N)
if [ -z "$answered" ]; then
  echo "rollwatch never answered /healthz within 60 s; its log:" >&2
  cat "$dir/rollwatch.log" >&2
  exit 1
fi
echo "rollwatch run: answering /healthz after $(seconds "$started" "$ready") s"
echo "peak RSS: $(peak_rss $pid)"
kill -TERM "$pid"; wait "$pid"
