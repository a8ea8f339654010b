#!/usr/bin/env bash
# A fleet shared among replicas on etcd:
# `bash scripts/measure-fleet-ha.sh [DEPLOYMENTS] [REPLICAS] [SECONDS] [TTL]` (default 1500
# deployments, 3 replicas, 120 s, ttl 10s). Debian's etcd-server on loopback; the deployments of
# scripts/measure-fleet.sh (2 targets each polled every 5 s against one loopback simulator,
# evaluation every 5 s); every replica runs the same fleet with `[ha]`. Prints how long the
# replicas took to share the fleet out and how many each holds; each replica's peak resident
# memory and CPU over SECONDS of steady state (and etcd's CPU); the evaluations each holder made
# against those due; how long an outage took to be rolled back; then SIGKILLs the last replica
# and prints how long its deployments took to be held again (goal: within the ttl + 2 s) and how
# long an outage in one of them took to be rolled back by its new holder. KEEP=1 keeps the
# working directory (logs, journals) and prints where; BIN=PATH measures another build (to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/loopback.sh
. scripts/fleet-sim.sh
n=${1:-1500}
replicas=${2:-3}
seconds=${3:-120}
ttl=${4:-10s}
bin=${BIN:-$(release_binary)}  # BIN=path: another build, to compare
command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 1; if [ -n "${KEEP:-}" ]; then echo "kept: $dir"; else rm -rf "$dir"; fi' EXIT

client=$(free_port); peer=$(free_port)
etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$client" \
  --advertise-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "default=http://127.0.0.1:$peer" \
  >"$dir/etcd.log" 2>&1 &
etcd_pid=$!
wait_for "http://127.0.0.1:$client/health"
fleet_simulator "$dir"
fleet_deployments "$dir" "$n" "$port"

pids=(); listens=()
for i in $(seq "$replicas"); do
  mkdir -p "$dir/r$i"
  listen="127.0.0.1:$(free_port)"
  cat > "$dir/r$i/rollwatch.toml" <<TOML
deployments = ["../deploy/*.toml"]
state_dir = "$dir/r$i/state"
listen = "$listen"
eval_interval = "5s"

[ha]
etcd = ["http://127.0.0.1:$client"]
key = "/rollwatch/fleet"
ttl = "$ttl"
replica = "r$i"
TOML
  "$bin" run -c "$dir/r$i/rollwatch.toml" >"$dir/r$i/stdout" 2>"$dir/r$i/rollwatch.log" &
  pids+=($!); listens+=("$listen")
done
started=$(date +%s.%N)

# Who holds what, by each replica's /status (its deployments that may act): prints
# "SECONDS_WAITED COUNT COUNT …" once every deployment is held by exactly one of the replicas
# given (their listen addresses).
held_once() {
  python3 - "$n" "$@" <<'PY'
import json, sys, time, urllib.request
n, listens = int(sys.argv[1]), sys.argv[2:]
start = time.time()
while True:
    holders, counts = {}, []
    for l in listens:
        try:
            rows = json.load(urllib.request.urlopen(f"http://{l}/status", timeout=5))["deployments"]
        except Exception:
            rows = []
        mine = [r["name"] for r in rows if r["may_act"]]
        counts.append(len(mine))
        for d in mine:
            holders.setdefault(d, []).append(l)
    if len(holders) == n and all(len(h) == 1 for h in holders.values()):
        print(f"{time.time() - start:.2f}", *counts)
        break
    if time.time() - start > 600:
        print("never", *counts)
        break
    time.sleep(0.1)
PY
}

for l in "${listens[@]}"; do wait_for "http://$l/healthz"; done
read -r settle counts <<<"$(held_once "${listens[@]}")"
echo "deployments: $n, targets: $((2 * n)), replicas: $replicas, ttl $ttl, polled every 5 s, evaluated every 5 s"
echo "shared out $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s after the start; deployments held: $counts (at most $(( (n + replicas - 1) / replicas + 1 )) each)"

# Steady state: CPU of each replica and of etcd; evaluations of the held deployments.
sleep 10
ticks_held() {  # the holders' ticks of the deployments they hold, summed, and how many
  for l in "${listens[@]}"; do curl -s "http://$l/metrics"; done | python3 -c "
import sys, re
lines = sys.stdin.read().splitlines()
held = set()
ticks = {}
for l in lines:
    m = re.match(r'rollwatch_leader\{deployment=\"([^\"]+)\"\} 1$', l)
    if m: held.add(m.group(1))
for l in lines:
    m = re.match(r'rollwatch_ticks_total\{deployment=\"([^\"]+)\"\} (\S+)$', l)
    if m and m.group(1) in held: ticks[m.group(1)] = max(ticks.get(m.group(1), 0), float(m.group(2)))
print(sum(ticks.values()), len(ticks))
"
}
# Requests etcd answered (its gRPC counters: the JSON gateway's calls included).
etcd_calls() { curl -s "http://127.0.0.1:$client/metrics" | awk '/^grpc_server_handled_total/ && /grpc_code="OK"/ {s += $2} END {print s + 0}'; }
hz=$(getconf CLK_TCK)
cpu0=(); for p in "${pids[@]}" "$etcd_pid"; do cpu0+=("$(cpu_ticks "$p")"); done
read -r ev0 _ <<<"$(ticks_held)"; calls0=$(etcd_calls); t0=$(date +%s.%N)
sleep "$seconds"
cpu1=(); for p in "${pids[@]}" "$etcd_pid"; do cpu1+=("$(cpu_ticks "$p")"); done
read -r ev1 evn <<<"$(ticks_held)"; calls1=$(etcd_calls); t1=$(date +%s.%N)
i=0
for p in "${pids[@]}" "$etcd_pid"; do
  who=$([ "$p" = "$etcd_pid" ] && echo etcd || echo "r$((i + 1))")
  cpu=$(python3 -c "print(f'{100 * (${cpu1[$i]} - ${cpu0[$i]}) / $hz / ($t1 - $t0):.1f}')")
  echo "$who: peak RSS $(peak_rss "$p"), CPU $cpu% of one core over $(python3 -c "print(f'{$t1 - $t0:.0f}')") s"
  i=$((i + 1))
done
echo "etcd answered $(python3 -c "print(f'{($calls1 - $calls0) / ($t1 - $t0):.0f}')") requests a second"
python3 -c "
made, due = $ev1 - $ev0, $evn * ($t1 - $t0) / 5
print(f'evaluations of the held deployments: {made:.0f} made, {due:.0f} due ({100 * made / due:.1f}%)')"

# An outage in d1, rolled back by its holder.
touch "$dir/down-d1"; down=$(date +%s.%N)
for _ in $(seq 600); do [ -s "$dir/acted-d1" ] && break; sleep 0.05; done
acted=$(cat "$dir/acted-d1" 2>/dev/null || echo never)
echo "rollback step in d1 ran $(python3 -c "print('never' if '$acted' == 'never' else f'{$acted - $down:.2f} s')") after the outage"

# The last replica SIGKILLed: its deployments held again by the others.
last=$((replicas - 1))
victim_held=$(curl -s "http://${listens[$last]}/status" | python3 -c "import json, sys; print('\\n'.join(r['name'] for r in json.load(sys.stdin)['deployments'] if r['may_act']))")
kill -KILL "${pids[$last]}"; killed=$(date +%s.%N)
unset 'pids[$last]'
survivors=("${listens[@]:0:$last}")
read -r took counts <<<"$(held_once "${survivors[@]}")"
echo "r$replicas SIGKILLed holding $(echo "$victim_held" | grep -c . || true) deployments: all held again after $took s (ttl $ttl + 2 s at most); held: $counts"
# An outage in one of them, rolled back by its new holder.
d=$(echo "$victim_held" | grep -v '^d1$' | head -1)
touch "$dir/down-$d"; down=$(date +%s.%N)
for _ in $(seq 600); do [ -s "$dir/acted-$d" ] && break; sleep 0.05; done
acted=$(cat "$dir/acted-$d" 2>/dev/null || echo never)
echo "rollback step in $d (taken over) ran $(python3 -c "print('never' if '$acted' == 'never' else f'{$acted - $down:.2f} s')") after its outage"
echo "deployments that acted: $(ls "$dir" | grep -c '^acted-' || true) (d1 and $d should)"
echo "failed polls: $(for l in "${survivors[@]}"; do curl -s "http://$l/metrics"; done | grep -E '^rollwatch_target_errors_total' | awk '{s += $2} END {print s + 0}') (the outages included)"
grep -h "claiming" "$dir"/r*/rollwatch.log | head -1 | cut -c1-40 || true
for p in "${pids[@]}"; do kill -TERM "$p"; done
for p in "${pids[@]}"; do wait "$p" || true; done
