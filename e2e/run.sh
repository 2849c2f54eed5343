#!/usr/bin/env bash
# End-to-end suite on a throwaway kind cluster. Needs docker (with a running
# engine), kind, kubectl and helm; without them it says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ] && ! docker info >/dev/null 2>&1; then
  missing+=("a running Docker engine")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "e2e: SKIPPED - needs ${missing[*]} (docker, kind, kubectl and helm); nothing was run"
  exit 0
fi

CLUSTER=${E2E_CLUSTER:-modeldeploy-e2e}
IMAGE=${E2E_IMAGE:-modeldeploy:e2e}
NAMESPACE=modeldeploy-system
keep=${E2E_KEEP_CLUSTER:-}

cleanup() {
  status=$?
  if [ $status -ne 0 ]; then
    echo "e2e: failed; operator logs and events follow"
    kubectl -n "$NAMESPACE" logs deploy/modeldeploy --tail=300 || true
    kubectl get events -A --sort-by=.lastTimestamp | tail -100 || true
  fi
  [ -n "$keep" ] || kind delete cluster --name "$CLUSTER" || true
  exit $status
}
trap cleanup EXIT

kind create cluster --name "$CLUSTER" --wait 120s
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"
helm lint charts/modeldeploy
helm template modeldeploy charts/modeldeploy >/dev/null
# The optional parts render too (the Prometheus Operator CRDs are not needed to render).
helm template modeldeploy charts/modeldeploy --set prometheusRule.enabled=true \
  --set grafanaDashboard.enabled=true --set serviceMonitor.enabled=true \
  --set prometheus.url=http://prometheus:9090 --set notifications.webhook.existingSecret=hook >/dev/null
helm install modeldeploy charts/modeldeploy -n "$NAMESPACE" --create-namespace \
  --set image.repository="${IMAGE%%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never --wait
E2E_IMAGE="$IMAGE" cargo test --locked --test e2e -- --ignored --test-threads=1
