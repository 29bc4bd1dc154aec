#!/usr/bin/env bash
# The demo: local lab clusters east and west running Istio itself (Istio's
# charts installed as the Sail Operator does, a real istiod per cluster,
# injection through istiod's webhook), a multi-primary multi-network mesh
# applied to them, its status and checks (istiod's own view of remote
# clusters, networks and CA among them), and the helloworld check of
# cross-cluster traffic. Only Envoy cannot run here: the emulator plays its
# forwarding, with certificates and endpoints from the real istiods.
# KEEP=1 leaves the clusters and the emulator running (bin/flotilla-lab down
# stops the clusters; kill the emulator by the pid printed).
set -euo pipefail
cd "$(dirname "$0")/.."
lab=./bin/flotilla-lab
flotilla=./bin/flotilla
emulator=./bin/flotilla-emulator
go build -o "$emulator" ./scenarios/cmd/flotilla-emulator
work=$(mktemp -d /tmp/flotilla-demo.XXXXXX)
emu_pid=
if [ "${KEEP:-0}" != 1 ]; then
  trap '[ -n "$emu_pid" ] && kill "$emu_pid" 2>/dev/null; $lab down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fi
$lab down >/dev/null 2>&1 || true
start=$(date +%s)
# An assignment, not eval "$(...)": a lab that fails to start stops the demo here.
lab_env=$($lab up --istio east west)
eval "$lab_env"
# No Envoy runs in the lab: the emulator plays each injected pod's istio-agent
# and Envoy, taking its certificate from its istiod's CA and its endpoints
# from that istiod over xDS; kwok runs the curl that verify execs in the
# client pods.
$emulator --kubeconfig "$KUBECONFIG" --istiod --quiet &
emu_pid=$!

# The state key seals the root key in the state; it lives apart from the state.
$flotilla state keygen --out "$work/state.key" >/dev/null
export FLOTILLA_STATE="$work/state.db" FLOTILLA_STATE_KEY_FILE="$work/state.key"

cat > "$work/mesh.yaml" <<YAML
apiVersion: flotilla.dev/v1alpha1
kind: Mesh
metadata: {name: mesh1}
spec:
  meshID: mesh1
  trustDomain: cluster.local
  topology: multi-primary
  # Lab clusters are all on loopback, so remote secrets point at 127.0.0.1.
  allowLoopbackAPIServers: true
  pki: {mode: builtin, keyAlgorithm: ECDSA-P256}
  clusters:
  - {name: east, context: east, network: network1}
  - {name: west, context: west, network: network2}
YAML
echo "== flotilla apply -f mesh.yaml"
$flotilla apply -f "$work/mesh.yaml" 2>/dev/null
echo
echo "== flotilla status"
$flotilla status
echo
echo "== flotilla check"
$flotilla check
echo
echo "== flotilla verify"
# --keep: the lab goes down next, faster than removing the sample apps.
$flotilla verify --requests 10 --keep 2>/dev/null
echo
echo "demo finished in $(( $(date +%s) - start ))s"
if [ "${KEEP:-0}" = 1 ]; then echo "emulator pid $emu_pid"; fi
