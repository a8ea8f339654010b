# Shared by the fleet measurements (sourced after loopback.sh): a loopback simulator of many
# services, and a fleet's deployment files polling it.

# Starts the simulator in the background, serving DIR: /NAME/health answers 200 unless the file
# DIR/down-NAME exists; /NAME/version a version. Threaded, one request per connection. Sets
# `port`. Call directly (not in $(...)).
fleet_simulator() {
  local dir=$1
  port=$(free_port)
  cat > "$dir/sim.py" <<'PY'
import http.server, os, sys
root, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        name = parts[0]
        if parts[-1] == "version":
            body, code = b'{"status":"ok","version":"v1"}', 200
        elif os.path.exists(os.path.join(root, "down-" + name)):
            body, code = b"down", 503
        else:
            body, code = b"ok", 200
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
    def handle_error(self, request, client_address):
        pass  # a poll cut short at the sidecar's stop
S(("127.0.0.1", port), H).serve_forever()
PY
  python3 "$dir/sim.py" "$dir" "$port" 2>"$dir/sim.log" &
  wait_for "http://127.0.0.1:$port/d1/health"
}

# Writes DIR/profile.toml and N deployment files DIR/deploy/dI.toml: 2 targets each (a health
# check and a version endpoint on the simulator at PORT) polled every 5 s; the rollback step
# writes the time to DIR/acted-dI.
fleet_deployments() {
  local dir=$1 n=$2 port=$3
  mkdir -p "$dir/deploy"
  down_profile "$dir/profile.toml"
  printf '\n[[procedure.rollback]]\nrun = "undo"\n' >> "$dir/profile.toml"
  for i in $(seq "$n"); do
    cat > "$dir/deploy/d$i.toml" <<TOML
name = "d$i"
profiles = ["../profile.toml"]
version = { target = "app", field = "version" }

[[target]]
name = "api"
kind = "health"
url = "http://127.0.0.1:$port/d$i/health"
interval = "5s"
timeout = "2s"

[[target]]
name = "app"
kind = "health"
url = "http://127.0.0.1:$port/d$i/version"
interval = "5s"
timeout = "2s"

[actions.undo]
kind = "exec"
argv = ["/bin/sh", "-c", "date +%s.%N > $dir/acted-d$i"]
TOML
  done
}
