#!/usr/bin/env bash
# Runs Starling's whole test suite, first installing what the tests need (Debian packages:
# the mosquitto broker and clients used as interop peers, and redis-server for the Redis store).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v mosquitto >/dev/null 2>&1 || packages+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || packages+=(mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
if ((${#packages[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing test dependencies: ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

cargo test --workspace --all-targets --locked "$@"
