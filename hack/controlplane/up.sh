#!/usr/bin/env bash
# Start the integration tests' control plane in the background, for people: state, logs and
# kubeconfig go to .cache/cluster/, and the last line printed is `export KUBECONFIG=...`, so
#   eval "$(hack/controlplane/up.sh)"
# points kubectl at it. Stop it with hack/controlplane/down.sh. The code is the pytest
# fixture's own (tests/support/controlplane/); build the binaries first with build.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python=${PYTHON:-python3}
[[ -z ${PYTHON:-} && -x .venv/bin/python ]] && python=.venv/bin/python
exec "$python" -m tests.support.controlplane up "$@"
