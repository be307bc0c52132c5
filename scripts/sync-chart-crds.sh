#!/usr/bin/env bash
# Regenerates the MqttCluster CRD from the operator's types into crds/, copies it into the
# chart (charts/starling-operator/crds/ must be byte-identical to crds/; a test checks) and
# re-renders deploy/ (scripts/render-deploy.sh). Run it after changing operator/src/crd.rs or
# operator/src/crd/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo run --quiet --locked -p starling-operator -- crd >crds/mqttcluster.yaml
rm -f charts/starling-operator/crds/*.yaml
cp crds/*.yaml charts/starling-operator/crds/
./scripts/render-deploy.sh
