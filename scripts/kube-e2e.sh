#!/usr/bin/env bash
# Runs the real-pods suite (e2e/tests/kubernetes.rs) against a single-node Kubernetes built and
# started on this machine by kube-up (the workplace tool ../shared/tools/kube-up: API server,
# scheduler, controller-manager, kubelet, kube-proxy, containerd, all in a network namespace of
# their own, with no registry access):
#
#   scripts/kube-e2e.sh [--debug] [-- EXTRA CARGO TEST ARGS]
#
#   1. kube-up: builds Kubernetes the first time (10-25 min on 2 cores), starts it, waits for
#      the node to be Ready;
#   2. the broker and operator binaries: `cargo build --release` (--debug: the debug binaries,
#      quicker to build, slower to run);
#   3. the managed Redis' image (redis:7.4-alpine): the node cannot pull it, so kube-images
#      (../shared/tools/kube-images) makes a stand-in from Debian's redis-server;
#   4. the test, run inside the cluster's network namespace (`kube-up exec`) so it reaches the
#      node's NodePorts and the pods' addresses. It builds Starling's images with
#      scripts/build-images.sh and imports them into the node's containerd with `ctr`.
#
# The figures are appended to STARLING_E2E_REPORT (default target/kube-e2e-report.txt); when a
# stream loses messages, the pods' logs are kept under STARLING_E2E_LOG_DIR (default
# target/kube-e2e-logs/<time>).
# Env: KUBE_UP, KUBE_IMAGES (the tools' paths), KUBE_UP_DIR (/tmp/kube-up), MICROSHIFT_GIT
# (kube-up's source of Kubernetes), CARGO_TARGET_DIR.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

profile=release
if [ "${1:-}" = --debug ]; then profile=debug; shift; fi
[ "${1:-}" = -- ] && shift

kube_up="${KUBE_UP:-$root/../shared/tools/kube-up}"
kube_images="${KUBE_IMAGES:-$root/../shared/tools/kube-images}"
for tool in "$kube_up" "$kube_images"; do
  [ -x "$tool" ] || { echo "kube-e2e.sh: $tool not found (set KUBE_UP / KUBE_IMAGES)" >&2; exit 1; }
done
target_dir="${CARGO_TARGET_DIR:-$root/target}"
socket="${KUBE_UP_DIR:-/tmp/kube-up}/run/containerd.sock"

echo "== kube-up"
# A cluster that is up and Ready is used as it is (`kube-up up` again re-checks every piece).
if "$kube_up" exec kubectl wait --for=condition=Ready node --all --timeout=5s >/dev/null 2>&1; then
  echo "the cluster is up, its node Ready"
else
  "$kube_up" up
fi

echo "== binaries ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --locked -p starling-broker -p starling-operator
else
  cargo build --locked -p starling-broker -p starling-operator
fi

echo "== Redis stand-in image (the node has no registry access)"
CTR_ADDRESS="$socket" "$kube_images" redis

echo "== tools of the Redis stand-in with a shell (scripts/redis-standin-image.py)"
command -v busybox >/dev/null || apt-get install -y -qq busybox-static >/dev/null
command -v redis-cli >/dev/null || apt-get install -y -qq redis-tools >/dev/null

echo "== the suite"
# The operator's own e2e test (e2e/tests/operator.rs) applies the CRD with a field manager of its
# own; left installed, it makes `helm install` fail with a field conflict on the CRD. Remove it
# (and so any MqttCluster left in this test cluster) so the story starts from a clean cluster.
"$kube_up" exec kubectl delete crd mqttclusters.mqtt.starling.dev --ignore-not-found >/dev/null
cargo test --locked -p e2e --test kubernetes --no-run
report="${STARLING_E2E_REPORT:-$target_dir/kube-e2e-report.txt}"
logs="${STARLING_E2E_LOG_DIR:-$target_dir/kube-e2e-logs/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$(dirname "$report")"
"$kube_up" exec env \
  STARLING_E2E_IMAGE_LOAD="ctr --address $socket -n k8s.io images import" \
  STARLING_E2E_BIN_DIR="$target_dir/$profile" \
  STARLING_E2E_REPORT="$report" \
  STARLING_E2E_LOG_DIR="$logs" \
  cargo test --locked --offline -p e2e --test kubernetes -- --ignored --nocapture "$@"
echo "figures appended to $report"
