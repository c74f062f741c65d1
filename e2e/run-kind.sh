#!/usr/bin/env bash
# Real-cluster e2e: a kind cluster with KubeRay 1.7.0, the operator and serving images built
# from this checkout and loaded into it, the llmdeploy-operator chart installed, then the e2e/
# pytest suite (examples/tiny-cpu.yaml: Ready, an OpenAI request, kubectl scale, delete).
#
# Needs docker, kind, kubectl and a set-up .venv (`make setup`); helm is taken from PATH or, if
# absent, from the dev extra's wheel (tests/chart/helm.py). Building the CPU serving image
# downloads Ray's CPU image and vLLM's CPU build: expect a few GB and many minutes the first time.
#
#   e2e/run-kind.sh                  # create the cluster, build, install, test, delete the cluster
#   KEEP_CLUSTER=1 e2e/run-kind.sh   # leave the cluster running afterwards (reused by the next run)
#   SKIP_BUILD=1 e2e/run-kind.sh     # reuse images built by an earlier run
#   e2e/run-kind.sh -k scale         # extra arguments go to pytest
#
# Environment: CLUSTER (kind cluster name), OPERATOR_IMAGE, SERVING_IMAGE, NAMESPACE (of the test
# LLMDeployment), OPERATOR_NAMESPACE, LLMDEPLOY_E2E_READY_TIMEOUT_S (default 1200).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-llmdeploy-e2e}
KUBERAY_VERSION=1.7.0
OPERATOR_IMAGE=${OPERATOR_IMAGE:-ghcr.io/llmdeploy/llmdeploy-operator:e2e}
SERVING_IMAGE=${SERVING_IMAGE:-ghcr.io/llmdeploy/llmdeploy-serving-cpu:e2e}
NAMESPACE=${NAMESPACE:-llmdeploy-e2e}
OPERATOR_NAMESPACE=${OPERATOR_NAMESPACE:-llmdeploy-system}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
PYTHON=.venv/bin/python

log() { printf '\n==> %s\n' "$*"; }

for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not on PATH" >&2; exit 1; }
done
[[ -x $PYTHON ]] || { echo "error: $PYTHON missing: run \`make setup\` first" >&2; exit 1; }
HELM=${HELM:-$(command -v helm || "$PYTHON" tests/chart/helm.py)}

if kind get clusters | grep -qx "$CLUSTER"; then
    log "reusing kind cluster $CLUSTER"
else
    log "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --wait 180s
fi
if [[ $KEEP_CLUSTER != 1 ]]; then
    trap 'log "deleting kind cluster $CLUSTER"; kind delete cluster --name "$CLUSTER"' EXIT
fi
kubectl config use-context "kind-$CLUSTER"

if [[ $SKIP_BUILD != 1 ]]; then
    log "building $OPERATOR_IMAGE and $SERVING_IMAGE"
    docker build -f docker/operator.Dockerfile -t "$OPERATOR_IMAGE" .
    docker build -f docker/serving-cpu.Dockerfile -t "$SERVING_IMAGE" .
fi
log "loading the images into $CLUSTER"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$SERVING_IMAGE"

log "installing KubeRay $KUBERAY_VERSION"
"$HELM" repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
"$HELM" upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
    --namespace kuberay-system --create-namespace --wait --timeout 10m

log "installing the llmdeploy-operator chart"
# The chart's crds/ are applied on install only: apply the current CRD so a reused cluster has it.
kubectl apply --server-side --force-conflicts -f charts/llmdeploy-operator/crds/llmdeploy.io_llmdeployments.yaml
"$HELM" upgrade --install llmdeploy charts/llmdeploy-operator \
    --namespace "$OPERATOR_NAMESPACE" --create-namespace \
    --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
    --set image.pullPolicy=Never --set verbose=true \
    --wait --timeout 5m
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -

log "running the e2e suite"
status=0
"$PYTHON" -m pytest e2e --with-e2e -p no:cacheprovider \
    --e2e-namespace "$NAMESPACE" --e2e-serving-image "$SERVING_IMAGE" "$@" || status=$?
if [[ $status != 0 ]]; then
    log "operator log (last 200 lines)"
    kubectl -n "$OPERATOR_NAMESPACE" logs deployment/llmdeploy-llmdeploy-operator --tail 200 || true
    kubectl -n "$NAMESPACE" get llmdeployments,rayservices,pods -o wide || true
fi
exit "$status"
