#!/usr/bin/env bash
# The whole user path on a kind cluster: build the image (`make image`, whichever builder the
# machine has), load its archive into the cluster, install the chart, apply every example,
# wait for the policies to be Ready, and send a request through a proxy's endpoint.
# Needs kind (and the Docker or Podman it runs its nodes in), kubectl and helm; it cannot run
# on the project's CI machines (no container runtime there), where tests/integration covers
# the same path against a real API server with kwok.
#
#   hack/kind-e2e.sh                          the request reaches OpenAI with the examples'
#                                             placeholder key: a 401 proves the path works
#   OPENAI_API_KEY=sk-... hack/kind-e2e.sh    with a real key: expects 200
#   KEEP=1 hack/kind-e2e.sh                   leave the cluster running afterwards
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER=${CLUSTER:-sluice-e2e}
IMAGE_REPOSITORY=${IMAGE_REPOSITORY:-sluice}
IMAGE_TAG=${IMAGE_TAG:-dev}  # the tag `make image` gives by default: its cached build is reused
SYSTEM=sluice-system
DEMO=sluice-demo
CURL_IMAGE=curlimages/curl:8.11.1

for tool in kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is needed" >&2; exit 1; }
done

step() { printf '\n== %s\n' "$*"; }
cleanup() {
  if [[ -z ${KEEP:-} ]]; then
    kind delete cluster --name "$CLUSTER"
  else
    echo "kind-e2e: cluster $CLUSTER kept; kind delete cluster --name $CLUSTER removes it"
  fi
}

step "image $IMAGE_REPOSITORY:$IMAGE_TAG"
make --no-print-directory image IMAGE="$IMAGE_REPOSITORY:$IMAGE_TAG"

step "cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --wait 120s
trap cleanup EXIT
kubectl config use-context "kind-$CLUSTER"

step "image $IMAGE_REPOSITORY:$IMAGE_TAG into the cluster"
kind load image-archive build/image/sluice.tar --name "$CLUSTER"

step "chart"
# pullPolicy Never: the image exists only inside the kind node, loaded above. The proxies
# run the same image by default (IfNotPresent, which finds it there too).
helm install sluice charts/sluice \
  --namespace "$SYSTEM" --create-namespace \
  --set image.repository="$IMAGE_REPOSITORY" --set image.tag="$IMAGE_TAG" \
  --set image.pullPolicy=Never \
  --wait --timeout 3m
kubectl get crd llmbatchpolicies.sluice.dev toolcachepolicies.sluice.dev

step "examples in namespace $DEMO"
kubectl create namespace "$DEMO"
kubectl -n "$DEMO" apply -f examples/
if [[ -n ${OPENAI_API_KEY:-} ]]; then
  kubectl -n "$DEMO" create secret generic openai --from-literal=api-key="$OPENAI_API_KEY" \
    --dry-run=client --output=yaml | kubectl -n "$DEMO" apply -f -
fi
for policy in lbp/openai lbp/openai-shared tcp/tools; do
  kubectl -n "$DEMO" wait --for=condition=Ready "$policy" --timeout=5m
done
kubectl -n "$DEMO" get sluice --output=wide
# A key set after the pods started reaches them only with new pods.
if [[ -n ${OPENAI_API_KEY:-} ]]; then
  kubectl -n "$DEMO" rollout restart deployment/openai-llm
  kubectl -n "$DEMO" rollout status deployment/openai-llm --timeout=3m
fi

step "a request through the proxy's endpoint, from inside the cluster"
endpoint=$(kubectl -n "$DEMO" get lbp openai --output=jsonpath='{.status.endpoint}')
expected=401
[[ -n ${OPENAI_API_KEY:-} ]] && expected=200
status=$(kubectl -n "$DEMO" run e2e-probe --quiet --rm --stdin --restart=Never \
  --image="$CURL_IMAGE" -- curl --silent --output /dev/null --write-out '%{http_code}' \
  --max-time 30 "$endpoint/models")
echo "GET $endpoint/models -> $status (expected $expected)"
[[ $status == "$expected" ]]

step "kind-e2e passed"
