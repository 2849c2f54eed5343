#!/usr/bin/env bash
# From zero to a judged canary on a throwaway kind cluster: builds the image
# and the kubectl plugin, installs the chart (which installs the CRD), runs
# the demo model under load, bumps its version and watches the canary being
# judged and promoted. Needs docker (with a running engine), kind, kubectl,
# helm and cargo; without them it says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ] && ! docker info >/dev/null 2>&1; then
  missing+=("a running Docker engine")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "quickstart: SKIPPED - needs ${missing[*]} (docker, kind, kubectl, helm and cargo); nothing was run"
  exit 0
fi

CLUSTER=${QUICKSTART_CLUSTER:-modeldeploy}
IMAGE=modeldeploy:dev

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kubectl config use-context "kind-$CLUSTER"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

# The operator runs in the cluster: it scrapes the model pods' /metrics by
# pod IP, which a machine outside the cluster network cannot reach.
helm upgrade --install modeldeploy charts/modeldeploy -n modeldeploy-system --create-namespace \
  --set image.repository=modeldeploy --set image.tag=dev --set image.pullPolicy=Never --wait

# The plugin, on PATH for kubectl as `kubectl modeldeploy`.
cargo build --release --locked --bin kubectl-modeldeploy
export PATH="$PWD/target/release:$PATH"

kubectl apply -f e2e/quickstart/model.yaml
kubectl wait --for=jsonpath='{.status.phase}'=Stable mdep/quickstart --timeout=5m
kubectl modeldeploy status quickstart

echo "quickstart: releasing version 2.0.0; the canary is judged on errors and latency"
kubectl patch mdep quickstart --type merge -p '{"spec":{"model":{"version":"2.0.0"}}}'
kubectl wait --for=jsonpath='{.status.phase}'=Progressing mdep/quickstart --timeout=2m
kubectl modeldeploy status quickstart --watch --timeout 10m &
watcher=$!
kubectl wait --for=jsonpath='{.status.stable.version}'=2.0.0 mdep/quickstart --timeout=10m
kill "$watcher" 2>/dev/null || true
kubectl modeldeploy history quickstart
echo "quickstart: done. Try a bad version: kubectl patch mdep quickstart --type merge -p '{\"spec\":{\"model\":{\"version\":\"3.0.0\",\"env\":[{\"name\":\"ERROR_RATE\",\"value\":\"0.2\"}]}}}'"
echo "quickstart: remove the cluster with: kind delete cluster --name $CLUSTER"
