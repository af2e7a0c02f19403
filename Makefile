# The commands people run; each sets up what it needs first (hack/setup.sh is idempotent).
# `make run` and `make test` are the README's two commands.

PYTHON := .venv/bin/python
UPSTREAM ?= https://api.openai.com/v1
PORT ?= 8080

.PHONY: run test lint unit integration crds image bench bench-quick bench-deps cluster-up cluster-down kind-e2e

## run: start the proxy on its built-in in-memory defaults (UPSTREAM=..., PORT=...)
run:
	@hack/setup.sh
	$(PYTHON) -m sluice proxy --upstream $(UPSTREAM) --host 127.0.0.1 --port $(PORT)

## test: set up everything (venv, redis-server, control plane) and run lint + the whole suite
test:
	@hack/setup.sh --tests
	@$(MAKE) --no-print-directory lint
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench
	$(PYTHON) -m mypy
	.venv/bin/lint-imports

unit:
	@hack/setup.sh
	$(PYTHON) -m pytest -m "not integration"

integration:
	@hack/setup.sh --tests
	$(PYTHON) -m pytest -m integration

## crds: regenerate crds/ and the chart's copies from the pydantic models
crds:
	$(PYTHON) -m sluice crds --write crds --write charts/sluice/files/crds

## image: build the image with docker, podman or buildah, whichever works here, into
## build/image/ (sluice.tar, its SBOM sluice.cdx.json); IMAGE=..., PYTHON_IMAGE=..., BUILDER=...
image:
	@hack/setup.sh
	hack/image/build.sh

## bench: every scenario against Sluice, LiteLLM and the baselines in one run (<= 15 min on
## 2 cores, with a 10-minute soak); writes docs/benchmarks.md and docs/benchmarks.png
## (needs wrk and redis-server; LiteLLM installs itself into ~/.cache/sluice/bench/ once)
bench: bench-deps
	$(PYTHON) -m bench

## bench-quick: the same in under 3 minutes (fewer requests, no soak)
bench-quick: bench-deps
	$(PYTHON) -m bench --quick

bench-deps:
	@hack/setup.sh
	@command -v wrk >/dev/null && command -v redis-server >/dev/null \
		|| apt-get install -y --no-install-recommends wrk redis-server
	$(PYTHON) -m pip install --quiet -e '.[bench]'

## cluster-up / cluster-down: the tests' control plane, in the background, for people
cluster-up:
	@hack/setup.sh --tests
	@hack/controlplane/up.sh

cluster-down:
	@hack/controlplane/down.sh

## kind-e2e: the whole path on a kind cluster, with the archive of `make image` (needs kind and
## a container runtime for it; not possible on the CI machines)
kind-e2e:
	hack/kind-e2e.sh
