#!/usr/bin/env bash
# The README's test command: installs the real peers the tests run against (Debian's
# prometheus, prometheus-alertmanager, etcd-server and python3-aiosmtpd, a real SMTP server; libfaketime for a
# replica with a wrong clock; the tests start
# them themselves on free loopback ports; e2fsprogs for a real ext4 state_dir; chromium for the
# status page), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || need+=(python3-aiosmtpd)
# A real etcd for high availability (tests/it/ha.rs).
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# libfaketime: one replica's clock an hour ahead (tests/it/ha_faults.rs).
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(libfaketime)
# Certificates for the TLS etcd test.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# A real browser for the /status page (tests/it/browser.rs).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# A journal on a real ext4 that turns read-only mid-run (tests/it/crash.rs).
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test
