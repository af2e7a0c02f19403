# syntax=docker/dockerfile:1
# One image, two entry points: `sluice operator` (the chart runs it) and `sluice proxy` (the
# operator runs it for each policy). Build it with `make image` (hack/image/build.sh: docker,
# podman or buildah, whichever works here), or by hand: docker build -t sluice:dev .
#
# The base is pinned to an exact patch release; pin its digest too where builds must be
# reproducible: docker buildx imagetools inspect python:3.11.13-slim-bookworm. Any base with
# Python 3.11, `python` on PATH, venv and CA certificates works: where no registry can be
# reached, hack/image/base.sh makes one from Debian's packages.
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
# Two optional secrets, for hosts that reach the package index only through their own trust
# store or pip settings (a TLS-inspecting proxy, a mirror): `ca-bundle` (PEM) and `pip.conf`.
# Secrets are mounted for this one step and are never part of a layer; hack/image/build.sh
# passes them when the host has them (`RUN --mount` needs BuildKit, Docker's builder since
# 23.0, or buildah/podman). Then the installer itself goes (pip, setuptools): the
# venv carries only what `sluice` imports. Bytecode is compiled now, as the root filesystem
# is read-only at run time.
RUN --mount=type=secret,id=ca-bundle,required=false \
    --mount=type=secret,id=pip.conf,required=false \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/sluice/bin/pip install . \
    && /opt/sluice/bin/pip uninstall --yes --quiet pip setuptools \
    && /opt/sluice/bin/python -m compileall -q /opt/sluice/lib

# --- run: the virtualenv on a clean base, as a numeric non-root user -------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Caching and batching proxies for LLM APIs and MCP servers, and their Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/sluice-dev/sluice"
# No installer at run time either: the base's pip, setuptools and wheel (python slim keeps
# them in /usr/local, Debian's ensurepip in /usr/share/python-wheels) go. And what the base
# leaves open to everyone (/var/tmp, /run/lock) is closed, so /tmp (an emptyDir in the pods)
# is the only place the user can write. The user gets a name (as distroless's "nonroot"):
# kopf asks getpass.getuser() for its identity and fails on a uid that /etc/passwd lacks.
RUN rm -rf /usr/local/bin/pip /usr/local/bin/pip3* /usr/local/bin/wheel \
        /usr/local/lib/python3*/site-packages/pip \
        /usr/local/lib/python3*/site-packages/pip-* \
        /usr/local/lib/python3*/site-packages/setuptools \
        /usr/local/lib/python3*/site-packages/setuptools-* \
        /usr/local/lib/python3*/site-packages/pkg_resources \
        /usr/local/lib/python3*/site-packages/_distutils_hack \
        /usr/local/lib/python3*/site-packages/distutils-precedence.pth \
        /usr/local/lib/python3*/site-packages/wheel \
        /usr/local/lib/python3*/site-packages/wheel-* \
        /usr/local/lib/python3*/ensurepip/_bundled \
        /usr/share/python-wheels \
    && find / -xdev -path /tmp -prune -o -perm -0002 ! -type l -exec chmod o-w {} + \
    && echo 'nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin' >>/etc/passwd \
    && echo 'nonroot:x:65532:' >>/etc/group
COPY --from=build /opt/sluice /opt/sluice
# SLUICE_LOG_FORMAT: `sluice proxy` logs one JSON object a line unless told --log-format text.
ENV PATH=/opt/sluice/bin:$PATH \
    SLUICE_LOG_FORMAT=json \
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
