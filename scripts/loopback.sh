# Shared by the measurement scripts (sourced): a free loopback port, waiting for a URL, a
# process's CPU time and peak memory.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() {
  for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('$1')" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "not answering: $1" >&2
  return 1
}
# Builds the release binary and prints its path (CARGO_TARGET_DIR honoured).
release_binary() {
  cargo build --release -q >&2 || { echo "cargo build failed" >&2; return 1; }
  local bin=${CARGO_TARGET_DIR:-target}/release/rollwatch
  [ -x "$bin" ] || { echo "no binary at $bin" >&2; return 1; }
  echo "$bin"
}
# Serves DIR over HTTP on a free loopback port, with DIR/health answering "ok" (remove the file
# for an outage); sets `port`. Call directly (not in $(...)): the server runs in the background.
serve_health() {
  echo ok > "$1/health"
  port=$(free_port)
  (cd "$1" && python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
  wait_for "http://127.0.0.1:$port/health"
}
# Writes the profile the scripts watch with: roll back while target `api` is down.
down_profile() {
  cat > "$1" <<'TOML'
[[rule]]
name = "down"
when = 'up("api") == 0'

[[decide]]
ask = "Is system down?"
if = 'firing("down")'
then = "rollback"
TOML
}
# A process's CPU time so far, in clock ticks (user + system).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# A process's peak resident memory (VmHWM).
peak_rss() { grep VmHWM "/proc/$1/status" | tr -s ' ' | cut -d' ' -f2-; }
