#!/usr/bin/env bash
# Stop the control plane that hack/controlplane/up.sh started (see there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python=${PYTHON:-python3}
[[ -z ${PYTHON:-} && -x .venv/bin/python ]] && python=.venv/bin/python
exec "$python" -m tests.support.controlplane down "$@"
