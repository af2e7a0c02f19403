"""The image `make image` built: its config, its contents, and both entry points running from it.

Everything runs from the image itself with buildah (tests/support/image.py), as the image's
user, on the host's loopback: `sluice version`; `sluice proxy` on a config the operator's
renderer wrote, answering `/healthz`, a chat request through the simulator and `/metrics`;
`sluice operator` against the test control plane, reconciling an example policy to Ready.
Then what is in the image: no file the user could write outside /tmp, no installer, compiler,
test or build secret, and a size and a package list within the budgets below, printed on every
run so a change in either shows in the CI log.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from sluice.operator import proxyconfig, resources
from tests.operator import factories
from tests.support import controlplane as cp
from tests.support import operator as op
from tests.support.image import Container, Image
from tests.support.proxy import free_port
from tests.support.simulator import Simulator

pytestmark = pytest.mark.integration

# Budgets, named from the measurement (bookworm base from hack/image/base.sh, Python 3.11):
# image 183 MB uncompressed (base layer 128 MB, venv layer 55 MB), venv 54 MB of files, 30
# distributions. A new dependency or a heavier base that crosses one is a decision to make
# here, not a drift.
IMAGE_BUDGET_MB = 200
VENV_BUDGET_MB = 64
PACKAGE_BUDGET = 32
VENV = "/opt/sluice"
USER = "65532:65532"

# Run inside the image as its user: every path, outside /tmp and the runtime's own mounts,
# that the user owns or may write.
WRITABLE = textwrap.dedent("""
    import json, os, stat
    uid, gid = os.getuid(), os.getgid()
    mounts = {line.split()[4] for line in open("/proc/self/mountinfo")} - {"/"}
    skip = mounts | {"/tmp"}
    found, checked = [], 0
    for top, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
        for name in dirs + files:
            path = os.path.join(top, name)
            info = os.lstat(path)
            if path in skip or stat.S_ISLNK(info.st_mode):
                continue
            checked += 1
            if info.st_uid == uid or info.st_gid == gid or os.access(path, os.W_OK):
                found.append(path)
    print(json.dumps({"uid": uid, "checked": checked, "found": found}))
""")

# Run inside the image: what of an installer, a compiler or the test suite it has.
TOOLS = textwrap.dedent("""
    import importlib.util, json, shutil, subprocess, sys
    modules = ["pip", "setuptools", "wheel", "pytest", "tests", "cyclonedx"]
    commands = ["pip", "pip3", "gcc", "cc", "c++", "make", "ld", "git", "buildah", "cyclonedx-py"]
    ensurepip = subprocess.run([sys.executable, "-m", "ensurepip", "--root", "/tmp/ensurepip"],
                               capture_output=True)
    print(json.dumps({
        "modules": [m for m in modules if importlib.util.find_spec(m)],
        "commands": [c for c in commands if shutil.which(c)],
        "ensurepip": ensurepip.returncode,
    }))
""")


def inside(container: Container, script: str) -> Any:
    """Run a Python script in the image as its user; its JSON answer."""
    result = container.run(["python", "-c", script])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def rootfs(container: Container) -> Iterator[pathlib.Path]:
    """The image's root filesystem, mounted read-only for reading from the host."""
    root = container.mount()
    yield root
    subprocess.run(["buildah", "umount", container.name], capture_output=True, check=False)


def test_the_config_names_the_user_entry_point_and_ports_that_the_chart_and_operator_use(
    sluice_image: Image,
) -> None:
    config = sluice_image.config
    values = yaml.safe_load((cp.REPO / "charts/sluice/values.yaml").read_text())
    policy = factories.llm()
    proxy = resources.container(policy, proxyconfig.render(policy), "any")

    assert config["User"] == USER == f"{resources.PROXY_UID}:{resources.PROXY_UID}"
    # The operator's proxy containers set the command, the chart's operator only args.
    assert config["Entrypoint"] == proxy["command"] == ["sluice"]
    assert config["Cmd"] == proxy["args"]
    assert config["WorkingDir"] == "/tmp"
    ports = {int(p.split("/")[0]) for p in config["ExposedPorts"]}
    chart = {values["operator"]["healthPort"], values["operator"]["metricsPort"]}
    assert ports == {p["containerPort"] for p in proxy["ports"]} | chart
    assert not [e for e in config.get("Env", []) if e.startswith(("PIP_", "SSL_", "REQUESTS_"))]


def test_sluice_version_runs_as_the_non_root_user_and_prints_the_package_version(
    sluice_image: Image, container: Container
) -> None:
    result = container.run([*sluice_image.entrypoint, "version"])
    # getpass.getuser(): kopf's identity, which needs the uid in /etc/passwd.
    ask = "import getpass, os; print(os.getuid(), os.getgid(), getpass.getuser())"
    whoami = container.run(["python", "-c", ask])

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == importlib.metadata.version("sluice-operator")
    assert whoami.stdout.split() == [*USER.split(":"), "nonroot"]


def test_the_user_owns_and_may_write_nothing_outside_tmp(container: Container) -> None:
    answer = inside(container, WRITABLE)

    assert answer["uid"] == 65532
    assert answer["checked"] > 1000  # the walk really saw the image
    assert answer["found"] == []


def test_the_final_stage_has_no_installer_compiler_or_test(container: Container) -> None:
    answer = inside(container, TOOLS)

    assert answer["modules"] == []
    assert answer["commands"] == []
    assert answer["ensurepip"] != 0  # no bundled pip to bootstrap either


def certificates(pem: str) -> set[str]:
    """The base64 bodies of the certificates in a PEM bundle, one line each."""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
    return {"".join(block.split()) for block in blocks}


def test_nothing_of_the_build_secrets_or_sources_is_in_the_image(
    sluice_image: Image, rootfs: pathlib.Path
) -> None:
    secrets = sluice_image.record["secrets"]
    image_bundle = (rootfs / "etc/ssl/certs/ca-certificates.crt").read_text()
    host_only: set[str] = set()
    if "ca-bundle" in secrets:  # certificates the host trusts and the base does not
        host = pathlib.Path(secrets["ca-bundle"]["source"]).read_text()
        host_only = certificates(host) - certificates(image_bundle)
    digests = {s["sha256"] for s in secrets.values()}

    leaks, named = [], []
    for path in rootfs.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        relative = "/" + str(path.relative_to(rootfs))
        if path.name in ("pip.conf", "pip.ini", "conftest.py", "pyproject.toml"):
            named.append(relative)
        data = path.read_bytes()
        pem = b"-----BEGIN CERTIFICATE-----" in data
        copied = pem and bool(certificates(data.decode(errors="replace")) & host_only)
        if copied or hashlib.sha256(data).hexdigest() in digests:
            leaks.append(relative)

    history = json.dumps(sluice_image.inspect.get("History", []))
    print(f"checked for {len(host_only)} host-only certificates and {len(secrets)} secrets")
    assert leaks == []
    assert named == []
    assert not (rootfs / "src").exists()
    assert "BEGIN CERTIFICATE" not in history


def runtime_closure(site: pathlib.Path, python: str) -> tuple[set[str], set[str]]:
    """Distributions in `site` that sluice-operator needs at run time, and those it lacks.

    Markers are evaluated for the image's Python version `python` (Debian's 3.11.2 needs
    async-timeout, a later 3.11 does not); the rest of the environment (Linux, CPython) is the
    host's, which the image shares.
    """
    dists = {
        canonicalize_name(d.metadata["Name"]): d
        for d in importlib.metadata.distributions(path=[str(site)])
    }
    needed: set[str] = set()
    missing: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("sluice-operator", frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name not in dists:
            missing.add(name)
            continue
        needed.add(name)
        for line in dists[name].requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            environment = {"python_full_version": python, "python_version": python[:4]}
            if marker is None or any(
                marker.evaluate({**environment, "extra": e}) for e in {"", *extras}
            ):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return needed, missing


def tree_size(root: pathlib.Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if not p.is_dir())


def test_size_and_packages_are_within_budget_and_only_runtime_dependencies(
    sluice_image: Image, rootfs: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = next((rootfs / VENV.lstrip("/")).glob("lib/python3*/site-packages"))
    installed = {
        f"{canonicalize_name(d.metadata['Name'])}=={d.version}"
        for d in importlib.metadata.distributions(path=[str(site)])
    }
    names = {line.split("==")[0] for line in installed}
    venv_config = (rootfs / VENV.lstrip("/") / "pyvenv.cfg").read_text()
    python = re.search(r"^version(?:_info)? = (\S+)$", venv_config, re.M)
    assert python is not None, venv_config
    needed, missing = runtime_closure(site, python[1])
    layers_mb = [size / 1e6 for size in sluice_image.layer_sizes]
    image_mb = sum(layers_mb)
    venv_mb = tree_size(rootfs / VENV.lstrip("/")) / 1e6

    with capsys.disabled():
        layers = " + ".join(f"{mb:.0f}" for mb in layers_mb)
        print(
            f"\nimage {sluice_image.name}: {image_mb:.0f} MB uncompressed (layers {layers}; "
            f"budget {IMAGE_BUDGET_MB}), venv {venv_mb:.0f} MB (budget {VENV_BUDGET_MB}), "
            f"base {sluice_image.record['base']}"
        )
        print(f"{len(installed)} distributions (budget {PACKAGE_BUDGET}): "
              + " ".join(sorted(installed)))  # fmt: skip

    assert missing == set()
    assert names == needed  # nothing that sluice-operator does not need at run time
    assert len(installed) <= PACKAGE_BUDGET
    assert venv_mb <= VENV_BUDGET_MB
    assert image_mb <= IMAGE_BUDGET_MB


class ContainerProcess:
    """A long-lived command in a container, with its log in a file; stopped by `stop()`."""

    def __init__(self, command: list[str], log_path: pathlib.Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"exited {self.process.returncode}:\n{self.log()}")

    def stop(self) -> None:
        # buildah run ends the command inside when it is itself terminated.
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except OSError as error:
        return getattr(error, "code", 0), b""


def test_the_proxy_from_the_image_answers_health_chat_and_metrics_on_a_rendered_config(
    sluice_image: Image,
    container: Container,
    simulator: Simulator,
    tmp_path: pathlib.Path,
) -> None:
    policy = factories.llm(
        upstream={"url": simulator.url, "apiKeySecretRef": {"name": "upstream", "key": "k"}}
    )
    rendered = proxyconfig.render(policy)
    config = yaml.safe_load(rendered.text)
    config["admin"]["port"] = free_port()  # the host's network is shared, unlike a pod's
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / proxyconfig.CONFIG_FILE).write_text(yaml.safe_dump(config))
    env = {e.env: "sk-upstream" for e in rendered.env}  # what the kubelet does from the Secret
    port = free_port()
    # The image's own command (what the operator's pods run), on a free loopback port.
    argv = [*sluice_image.entrypoint, *sluice_image.config["Cmd"]]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    command = container.command(argv, env=env, volumes={config_dir: proxyconfig.CONFIG_DIR})
    proxy = ContainerProcess(command, tmp_path / "proxy.log")
    base = f"http://127.0.0.1:{port}"
    try:
        cp.wait_for("proxy /readyz", lambda: get(base + "/readyz")[0] == 200, 60,
                    proxy.check_alive)  # fmt: skip
        health = get(base + "/healthz")
        client = openai.OpenAI(base_url=base + "/v1", api_key="caller-key", max_retries=0)
        messages: Any = [{"role": "user", "content": "hello from the image"}]
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        client.close()
        status, metrics = get(base + "/metrics")
    except BaseException:
        print(f"--- proxy log ---\n{proxy.log()}")
        raise
    finally:
        proxy.stop()

    assert health[0] == 200
    assert answer.choices[0].message.content
    assert simulator.stats.authorizations == {"Bearer sk-upstream"}
    assert status == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.decode())
        for sample in family.samples
    }
    upstream_calls = (
        "sluice_llm_requests_total",
        (("endpoint", "chat_completions"), ("status", "200")),
    )
    assert samples[upstream_calls] == 1


@pytest.fixture
def crds(controlplane: cp.ControlPlane) -> cp.ControlPlane:
    controlplane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(cp.REPO / "crds"))
    names = ["crd/llmbatchpolicies.sluice.dev", "crd/toolcachepolicies.sluice.dev"]
    controlplane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return controlplane


def test_the_operator_from_the_image_reconciles_an_example_policy_to_ready(
    sluice_image: Image, container: Container, crds: cp.ControlPlane, tmp_path: pathlib.Path
) -> None:
    plane = crds
    namespace = f"img-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", namespace)
    # The admin kubeconfig with its certificates inline, readable by the image's user only,
    # as a mounted Secret would be.
    kube_dir = tmp_path / "kube"
    kube_dir.mkdir()
    flat = plane.kubectl("config", "view", "--raw", "--flatten").stdout
    (kube_dir / "config").write_text(flat)
    uid, gid = (int(part) for part in USER.split(":"))
    for path in (kube_dir, kube_dir / "config"):
        path.chmod(0o700 if path.is_dir() else 0o600)
        os.chown(path, uid, gid)
    launcher = container.command(
        sluice_image.entrypoint,
        env={"KUBECONFIG": "/etc/sluice-kube/config"},
        volumes={kube_dir: "/etc/sluice-kube"},
    )
    process = op.OperatorProcess(plane, tmp_path, namespaces=(namespace,),
                                 launcher=tuple(launcher))  # fmt: skip
    try:
        process.start()
        op.apply(plane, namespace, op.EXAMPLES / "llm-policy.yaml")
        policy = op.ready_policy(plane, namespace, "lbp", "openai")
    except BaseException:
        print(f"--- operator log ---\n{process.log()[-20000:]}")
        raise
    finally:
        process.stop()
        plane.kubectl("delete", "namespace", namespace, "--wait=false")

    assert op.condition(policy, "Ready")["status"] == "True"
    deployment = op.get(plane, namespace, "deployment/openai-llm")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == op.PROXY_IMAGE
