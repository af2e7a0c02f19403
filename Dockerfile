# syntax=docker/dockerfile:1
# One image, two entry points: `sluice operator` (the chart runs it) and `sluice proxy` (the
# operator runs it for each policy). Build: docker build -t sluice:dev .
#
# The base is pinned to an exact patch release; pin its digest too where builds must be
# reproducible: docker buildx imagetools inspect python:3.11.13-slim-bookworm
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: install the package and its dependencies into a virtualenv -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/sluice
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Bytecode compiled now: the root filesystem is read-only at run time.
RUN /opt/sluice/bin/pip install . \
    && /opt/sluice/bin/python -m compileall -q /opt/sluice/lib

# --- run: the virtualenv on a clean base, as a numeric non-root user -------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Caching and batching proxies for LLM APIs and MCP servers, and their Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/sluice-dev/sluice"
COPY --from=build /opt/sluice /opt/sluice
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532 is the conventional "nonroot" id; the operator's pod specs name it too (runAsUser),
# so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
WORKDIR /tmp
# 8080 proxy API and /metrics (or the operator's /healthz), 8081 proxy admin, 9090 operator /metrics
EXPOSE 8080 8081 9090
ENTRYPOINT ["sluice"]
CMD ["proxy", "--config", "/etc/sluice/proxy.yaml"]
