"""Running `sluice operator` as a real subprocess against the test control plane, and waiting.

A subprocess rather than kopf's in-process `KopfRunner`: the tests then exercise the CLI, the
login from a kubeconfig, kopf's liveness endpoint and SIGTERM exactly as the operator's pod
does. Used by tests/integration/test_operator.py and test_chart.py, with the helpers both share:
the examples, a stand-in ServiceMonitor CRD, applying manifests and waiting for Ready.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from sluice.api import policies
from tests.support import controlplane as cp
from tests.support.proxy import free_port

PROXY_IMAGE = "registry.invalid/sluice:test"  # kwok never pulls it
EXAMPLES = cp.REPO / "examples"
SHORT = {kind.kind: kind.short_name for kind in policies.KINDS.values()}
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"plural": "servicemonitors", "singular": "servicemonitor",
                  "kind": "ServiceMonitor", "listKind": "ServiceMonitorList"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
        }],
    },
}  # fmt: skip

START_TIMEOUT_SECONDS = 60.0
WAIT_SECONDS = 60.0


@dataclasses.dataclass
class OperatorProcess:
    """One `sluice operator` on free ports, with its log in a file."""

    plane: cp.ControlPlane
    workdir: pathlib.Path
    kubeconfig: pathlib.Path | None = None  # default: the control plane's admin
    namespaces: tuple[str, ...] = ()
    # The words before `operator`: the package's CLI here, or a container's (test_image.py).
    launcher: tuple[str, ...] = (sys.executable, "-m", "sluice")
    health_port: int = dataclasses.field(default_factory=free_port)
    metrics_port: int = dataclasses.field(default_factory=free_port)
    # Seconds between reads of the proxy pods' /metrics: short, so a test sees them in a status.
    scrape_interval: float = 1.0
    # Seconds between re-reads of the referenced Secrets: short, so a rotation shows at once.
    secret_interval: float = 1.0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> pathlib.Path:
        return self.workdir / f"operator-{self.health_port}.log"

    def start(self) -> OperatorProcess:
        command = [
            *self.launcher, "operator",
            f"--proxy-image={PROXY_IMAGE}",
            f"--health-port={self.health_port}",
            f"--metrics-port={self.metrics_port}",
            f"--scrape-interval={self.scrape_interval}",
            f"--secret-interval={self.secret_interval}",
            *(f"--namespace={namespace}" for namespace in self.namespaces),
        ]  # fmt: skip
        kubeconfig = self.kubeconfig or self.plane.kubeconfig
        env = {**self.plane.env, "KUBECONFIG": str(kubeconfig)}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        cp.wait_for("operator /healthz", self.healthy, START_TIMEOUT_SECONDS, self.check_alive)
        return self

    def healthy(self) -> bool:
        return self.get(self.health_port, "/healthz") is not None

    def metrics(self) -> str:
        return self.get(self.metrics_port, "/metrics") or ""

    @staticmethod
    def get(port: int, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                return str(reply.read().decode())
        except urllib.error.HTTPError as error:
            error.close()
            return None
        except OSError:
            return None

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"operator exited {self.process.returncode}:\n{self.log()}")

    def stop(self) -> int | None:
        """SIGTERM, then the exit code (None when it had to be killed)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def token_kubeconfig(
    plane: cp.ControlPlane, namespace: str, account: str, path: pathlib.Path
) -> pathlib.Path:
    """A kubeconfig that signs in as a ServiceAccount with a fresh token (TokenRequest API)."""
    token = plane.kubectl("-n", namespace, "create", "token", account, "--duration=2h").stdout
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token.strip()}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path.write_text(yaml.safe_dump(config))
    return path


def get(plane: cp.ControlPlane, namespace: str, resource: str) -> dict[str, Any] | None:
    """`kubectl get -o json`, or None when it does not exist."""
    result = plane.kubectl("-n", namespace, "get", resource, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise RuntimeError(result.stderr)
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """One status condition of an object, or {} when it has none of that type."""
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    """Poll `check` until it returns something truthy, and return that; bounded."""
    found: list[Any] = []

    def ready() -> bool:
        found[:] = [check()]
        return bool(found[0])

    cp.wait_for(what, ready, timeout)
    return found[0]


def documents(path: pathlib.Path) -> Iterator[dict[str, Any]]:
    """The objects of a YAML file."""
    yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def apply(plane: cp.ControlPlane, namespace: str, manifest: dict[str, Any] | pathlib.Path) -> None:
    """`kubectl apply` a file, or one object."""
    if isinstance(manifest, pathlib.Path):
        plane.kubectl("-n", namespace, "apply", "-f", str(manifest))
    else:
        plane.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(manifest))


def events(plane: cp.ControlPlane, namespace: str, name: str, reason: str) -> list[Any]:
    """The Events about object `name` with `reason` (empty until the operator posts one)."""
    selector = f"--field-selector=involvedObject.name={name},reason={reason}"
    answer = plane.kubectl("-n", namespace, "get", "events", "-o", "json", selector)
    items: list[Any] = json.loads(answer.stdout)["items"]
    return items


def config_map(plane: cp.ControlPlane, namespace: str, child: str) -> dict[str, Any] | None:
    """The ConfigMap the Deployment `child` mounts (its name carries the config's hash)."""
    deployment = get(plane, namespace, f"deployment/{child}") or {}
    volumes = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])
    name = next((v["configMap"]["name"] for v in volumes if v["name"] == "config"), None)
    return None if name is None else get(plane, namespace, f"configmap/{name}")


def container_env(plane: cp.ControlPlane, namespace: str, child: str) -> dict[str, str]:
    """What the kubelet would put in the proxy container's environment: each `env` entry from
    its Secret key, and each `envFrom` Secret's keys behind their prefix."""
    deployment = get(plane, namespace, f"deployment/{child}")
    assert deployment is not None
    (container,) = deployment["spec"]["template"]["spec"]["containers"]

    def data(name: str) -> dict[str, str]:
        secret = get(plane, namespace, f"secret/{name}")
        assert secret is not None, name
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    env = {}
    for entry in container.get("env", []):
        ref = entry["valueFrom"]["secretKeyRef"]
        env[entry["name"]] = data(ref["name"])[ref["key"]]
    for source in container.get("envFrom", []):
        env.update({source["prefix"] + k: v for k, v in data(source["secretRef"]["name"]).items()})
    return env


def llm_policy(name: str, **spec: Any) -> dict[str, Any]:
    """An LLMBatchPolicy manifest."""
    meta = {"name": name}
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "LLMBatchPolicy", "metadata": meta,
            "spec": spec}  # fmt: skip


def ready_policy(plane: cp.ControlPlane, namespace: str, short: str, name: str) -> dict[str, Any]:
    """Wait until the policy is Ready with every replica ready, and return it."""

    def check() -> dict[str, Any] | None:
        policy = get(plane, namespace, f"{short}/{name}")
        if condition(policy, "Ready").get("status") != "True" or policy is None:
            return None
        wanted = policy["spec"]["proxy"]["replicas"]
        status = policy["status"]
        current = status.get("observedGeneration") == policy["metadata"]["generation"]
        return policy if current and status.get("readyReplicas") == wanted else None

    found: dict[str, Any] = wait_for(f"{short}/{name} Ready", check)
    return found
