#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian machine, idempotently:
#   hack/setup.sh          the Python environment (.venv) with the package and its dev tools
#   hack/setup.sh --tests  also redis-server and redis-cli (for the cache tests: one node, a
#                          Cluster, a Sentinel set), prometheus and promtool (for the metrics,
#                          dashboard and alert tests), the Kubernetes control plane built from
#                          Go modules (for the operator tests), and the image, built with
#                          buildah (for tests/integration/test_image.py)
# Re-running is cheap: each step checks what is already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python >= 3.11 is needed (found: $("$python" --version 2>&1))" >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f $stamp ]]; then
  echo "setup: installing sluice-operator and its dev tools into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

[[ ${1:-} == --tests ]] || exit 0

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  ((${#missing[@]})) || return 0
  echo "setup: apt-get install ${missing[*]}"
  local sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
# prometheus (Debian's 2.42, with promtool) scrapes a real proxy and operator in the metrics
# tests and evaluates the chart's dashboard queries and alert rules.
# buildah builds and runs the image without a daemon; debootstrap makes its base where no
# container registry can be reached (hack/image/base.sh).
# redis-tools has redis-cli, which joins the test cluster (tests/support/redistopologies.py).
apt_install redis-server redis-tools prometheus ca-certificates buildah debootstrap
# Go (≥ 1.26, as the project's machines have in /usr/local/go) builds the control plane;
# Debian 12's golang-go is too old, so there is nothing to install: build.py says so if missing.

echo "setup: building the test control plane (cached after the first run)"
PYTHON=.venv/bin/python hack/controlplane/build.sh

# With buildah whatever else the machine has, as the image test runs the image with buildah.
# Cached: only changed inputs (Dockerfile, pyproject.toml, src/, ...) rebuild it.
echo "setup: building the image (cached until its inputs change)"
BUILDER=buildah PYTHON=.venv/bin/python hack/image/build.sh
