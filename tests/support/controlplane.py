"""A real Kubernetes control plane for integration tests: a pytest plugin and a small CLI.

It runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on free loopback
ports, as controller-runtime's envtest does, with one kwok fake node so that pods are scheduled
and become Ready without a kubelet. The binaries come from ``hack/controlplane/build.sh``, at
the versions pinned in ``hack/controlplane/versions.env``.

As a plugin (``pytest_plugins = ["tests.support.controlplane"]``) it gives the session fixtures
``controlplane`` and ``kube_api``, and adds the components' log tails to the report of a failed
test that used them. As a program (``python -m tests.support.controlplane up|down|serve``,
wrapped by ``hack/controlplane/up.sh`` and ``down.sh``) it runs the same control plane for people.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO / "hack" / "controlplane" / "versions.env"
REQUIRED_FILES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
    "kwok-stages.yaml",
)
# Cluster IPs are only allocated, never routed: no kube-proxy runs and kwok pods are not real.
SERVICE_CIDR = "10.0.0.0/24"
FAKE_NODE = "kwok-node-0"
STARTUP_TIMEOUT = 60.0
CERT_VALIDITY = datetime.timedelta(days=365)


class StartupError(RuntimeError):
    """The control plane did not come up; the message carries the components' log tails."""


# --- Versions and binaries -------------------------------------------------------------


def read_versions() -> dict[str, str]:
    """The pinned versions, from the one file that both this module and build.sh read."""
    lines = (line.strip() for line in VERSIONS_FILE.read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def default_bin_dir() -> Path:
    """Where build.sh puts the binaries (keep in step with hack/controlplane/build.py)."""
    cache = os.environ.get("SLUICE_K8S_CACHE") or REPO / ".cache" / "k8s"
    return Path(cache) / read_versions()["KUBERNETES_VERSION"] / "bin"


def missing_files_message(bin_dir: Path) -> str | None:
    """Why the control plane cannot start here, or None when every binary is in place."""
    missing = [name for name in REQUIRED_FILES if not (bin_dir / name).is_file()]
    if not missing:
        return None
    return (
        f"control-plane files missing in {bin_dir} ({', '.join(missing)}): "
        "run hack/controlplane/build.sh (it needs Go ≥ 1.26 and takes minutes the first time)"
    )


# --- Certificates ----------------------------------------------------------------------


def write_pki(directory: Path) -> None:
    """Write a CA, the API server's serving cert, an admin client cert and the SA key pair.

    EC P-256 keys, because they are generated in microseconds where RSA takes a while. The
    admin cert's organisation system:masters is what kubectl, the Python client and the other
    components authenticate with; RBAC is still enforced for every other identity.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sluice-test-ca")])
    write_pem(directory, "ca", issue(ca, ca_key.public_key(), ca, ca_key, usage=None), ca_key)
    hosts = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    addresses = [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv4Network(SERVICE_CIDR)[1]]
    sans: list[x509.GeneralName] = [x509.DNSName(host) for host in hosts]
    sans += [x509.IPAddress(address) for address in addresses]
    server = [x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]
    write_leaf(directory, "apiserver", server, ExtendedKeyUsageOID.SERVER_AUTH, ca, ca_key, sans)
    admin = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
        x509.NameAttribute(NameOID.COMMON_NAME, "sluice-admin"),
    ]
    write_leaf(directory, "admin", admin, ExtendedKeyUsageOID.CLIENT_AUTH, ca, ca_key)
    write_service_account_keys(directory)


def write_leaf(
    directory: Path,
    stem: str,
    subject: list[x509.NameAttribute[str]],
    usage: x509.ObjectIdentifier,
    ca: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName] | None = None,
) -> None:
    """Issue a leaf certificate from the CA and write it with a fresh key as ``<stem>.*``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(x509.Name(subject), key.public_key(), ca, ca_key, usage=usage, sans=sans)
    write_pem(directory, stem, cert, key)


def issue(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier | None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """Sign a certificate: a CA when ``usage`` is None, else a leaf for that usage.

    Key identifiers are included because OpenSSL 3's strict verification (Python ≥ 3.13
    enables it by default) rejects chains without them.
    """
    is_ca = usage is None
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(key_usage(is_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def key_usage(is_ca: bool) -> x509.KeyUsage:
    """Signing certificates for a CA; signatures only for an EC leaf (no key encipherment)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=is_ca,
        crl_sign=is_ca,
        encipher_only=False,
        decipher_only=False,
    )


def write_pem(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Write ``<stem>.crt`` and ``<stem>.key`` (PKCS#8, unencrypted: throwaway test keys)."""
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(private_pem(key))


def write_service_account_keys(directory: Path) -> None:
    """The key pair that signs ServiceAccount tokens (apiserver) and verifies them."""
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "sa.key").write_bytes(private_pem(key))
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / "sa.pub").write_bytes(public)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PEM bytes of an unencrypted PKCS#8 private key."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    """A kubeconfig with file paths (not inline data), so no client writes temporary files."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sluice-test",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "sluice-admin",
                "user": {
                    "client-certificate": str(pki / "admin.crt"),
                    "client-key": str(pki / "admin.key"),
                },
            }
        ],
        "contexts": [
            {"name": "sluice-test", "context": {"cluster": "sluice-test", "user": "sluice-admin"}}
        ],
        "current-context": "sluice-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# --- Processes -------------------------------------------------------------------------


@dataclasses.dataclass
class Component:
    """One running binary of the control plane and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        """The last lines of the component's log, headed by its name and state."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        body = "\n".join(text.splitlines()[-lines:])
        return f"----- {self.name} ({state}): {self.log}\n{body}"

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) if it still runs."""
        if self.process.poll() is None:
            self.process.terminate()

    def wait(self, timeout: float) -> None:
        """Reap the process, killing it when SIGTERM was not enough within ``timeout``."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclasses.dataclass
class ControlPlane:
    """A running control plane: where it is, how to reach it, and how to stop it."""

    state_dir: Path
    bin_dir: Path
    server: str
    components: list[Component] = dataclasses.field(default_factory=list)

    def __repr__(self) -> str:
        names = ",".join(c.name for c in self.components if c.process.poll() is None)
        return f"<ControlPlane server={self.server} running={names} state_dir={self.state_dir}>"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (client certificate in group system:masters)."""
        return self.state_dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        """The folder of certificates and keys."""
        return self.state_dir / "pki"

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set, the pinned binaries first on PATH."""
        path = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return os.environ | {"KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane and capture its output."""
        command = [str(self.bin_dir / "kubectl"), *args]
        return subprocess.run(
            command, input=input, env=self.env, capture_output=True, text=True, check=check
        )

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext:
        """TLS context that trusts the test CA and presents the admin certificate."""
        context = ssl.create_default_context(cafile=self.pki / "ca.crt")
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return context

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """One JSON call to the API server as admin, with no client library in the way.

        Start-up uses this so it needs neither kubectl nor the kubernetes package. Returns
        (status, body as JSON or, failing that, text); connection errors give status 0.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.ssl_context, timeout=5) as reply:
                return reply.status, decode(reply.read())
        except urllib.error.HTTPError as error:
            with error:  # an HTTPError holds the open response: close it, or it warns
                return error.code, decode(error.read())
        except (urllib.error.URLError, OSError):
            return 0, None

    def launch(self, name: str, args: list[str]) -> None:
        """Start one binary in its own session, its output appended to ``logs/<name>.log``.

        Its own session, so a Ctrl-C at the terminal reaches only us and the components
        are then stopped in order rather than all at once.
        """
        log = self.state_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [self.bin_dir / name, *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.components.append(Component(name, process, log))

    def check_running(self) -> None:
        """Raise StartupError when a component has exited: waiting longer would not help."""
        dead = [c.name for c in self.components if c.process.poll() is not None]
        if dead:
            raise StartupError(f"{', '.join(dead)} exited\n{self.log_tails()}")

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every component's log, for failure reports."""
        return "\n".join(component.tail(lines) for component in self.components)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the components: all but etcd together, then etcd, which they depend on."""
        storage = [c for c in self.components if c.name == "etcd"]
        others = [c for c in self.components if c.name != "etcd"]
        for group in (others, storage):
            for component in group:
                component.terminate()
            for component in group:
                component.wait(timeout)


def decode(body: bytes) -> Any:
    """JSON when the API server sent JSON; plain text (as /readyz sends) otherwise."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def free_ports(count: int) -> list[int]:
    """Loopback ports the kernel hands out, all held at once so that they differ."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def wait_for(
    what: str,
    ready: Callable[[], bool],
    timeout: float = 60.0,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Poll ``ready`` every 0.1 s until it holds; ``check`` may raise to give up early."""
    deadline = time.monotonic() + timeout
    while not ready():
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


# --- Start-up --------------------------------------------------------------------------


def etcd_args(state_dir: Path, client_port: int, peer_port: int) -> list[str]:
    """A single-member etcd on loopback; without fsync, since test data needs no durability."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def apiserver_args(plane: ControlPlane, port: int, etcd_port: int) -> list[str]:
    """The API server with real RBAC and ServiceAccount tokens, serving on loopback only.

    The endpoint reconciler is off: it would publish 127.0.0.1 as the endpoint of Service
    ``kubernetes``, so the API server refuses to start with it ("may not be in the loopback
    range"), and nothing in-cluster needs that endpoint.
    """
    pki = plane.pki
    return [
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={plane.state_dir / 'apiserver'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=RBAC",
        "--allow-privileged=true",
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]


def controller_manager_args(plane: ControlPlane) -> list[str]:
    """Every default controller (garbage collector, deployments, service accounts, …)."""
    return [
        f"--kubeconfig={plane.kubeconfig}",
        "--controllers=*",
        "--leader-elect=false",
        "--secure-port=0",
        f"--service-account-private-key-file={plane.pki / 'sa.key'}",
        f"--root-ca-file={plane.pki / 'ca.crt'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
    ]


def scheduler_args(plane: ControlPlane) -> list[str]:
    """The default scheduler, without leader election or a serving port."""
    return [f"--kubeconfig={plane.kubeconfig}", "--leader-elect=false", "--secure-port=0"]


def kwok_args(plane: ControlPlane) -> list[str]:
    """kwok with kwokctl's default node and pod stages, for annotated nodes only."""
    return [
        f"--kubeconfig={plane.kubeconfig}",
        f"--config={plane.bin_dir / 'kwok-stages.yaml'}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--manage-nodes-with-label-selector=",
        "--manage-single-node=",
        "--cidr=10.244.0.0/16",
        "--node-ip=10.244.0.1",
        "--node-lease-duration-seconds=40",
    ]


def fake_node() -> dict[str, Any]:
    """The node kwok keeps Ready. Untainted, so any test's pods can land on it."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": FAKE_NODE,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": FAKE_NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"allocatable": resources, "capacity": resources},
    }


def node_ready(plane: ControlPlane) -> bool:
    """Whether kwok has marked the fake node Ready."""
    status, node = plane.request("GET", f"/api/v1/nodes/{FAKE_NODE}")
    conditions = node.get("status", {}).get("conditions", []) if status == 200 else []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def start(state_dir: Path, bin_dir: Path) -> ControlPlane:
    """Start every component and return once a pod in ``default`` could run.

    That is: the API server is ready, kwok reports the fake node Ready, and the
    controller-manager has made the ``default`` ServiceAccount (pods are refused before).
    """
    for stale in ("pki", "etcd", "apiserver", "logs"):  # a previous `serve` left them
        shutil.rmtree(state_dir / stale, ignore_errors=True)
    etcd_port, peer_port, api_port = free_ports(3)
    plane = ControlPlane(state_dir, bin_dir, server=f"https://127.0.0.1:{api_port}")
    write_pki(plane.pki)
    write_kubeconfig(plane.kubeconfig, plane.server, plane.pki)
    try:
        bring_up(plane, etcd_port, peer_port, api_port)
    except BaseException as error:
        tails = plane.log_tails()
        plane.stop()
        if isinstance(error, StartupError | TimeoutError):
            raise StartupError(f"{error}\n{tails}") from None
        raise
    return plane


def bring_up(plane: ControlPlane, etcd_port: int, peer_port: int, api_port: int) -> None:
    """Launch the components in dependency order, waiting where the next one needs it."""
    plane.launch("etcd", etcd_args(plane.state_dir, etcd_port, peer_port))
    wait_for(
        "etcd healthy",
        functools.partial(etcd_healthy, etcd_port),
        STARTUP_TIMEOUT,
        plane.check_running,
    )
    plane.launch("kube-apiserver", apiserver_args(plane, api_port, etcd_port))
    api_ready = functools.partial(exists, plane, "/readyz")
    wait_for("kube-apiserver /readyz", api_ready, STARTUP_TIMEOUT, plane.check_running)
    plane.launch("kube-controller-manager", controller_manager_args(plane))
    plane.launch("kube-scheduler", scheduler_args(plane))
    plane.launch("kwok", kwok_args(plane))
    status, body = plane.request("POST", "/api/v1/nodes", fake_node())
    if status != 201:
        raise StartupError(f"creating node {FAKE_NODE}: HTTP {status} {body}")
    wait_for(
        "fake node Ready",
        functools.partial(node_ready, plane),
        STARTUP_TIMEOUT,
        plane.check_running,
    )
    account = functools.partial(exists, plane, "/api/v1/namespaces/default/serviceaccounts/default")
    wait_for("ServiceAccount default/default", account, STARTUP_TIMEOUT, plane.check_running)


def exists(plane: ControlPlane, path: str) -> bool:
    """Whether GET ``path`` answers 200."""
    return plane.request("GET", path)[0] == 200


def etcd_healthy(port: int) -> bool:
    """Whether etcd answers its health endpoint with health true."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return bool(json.loads(reply.read()).get("health") == "true")
    except urllib.error.HTTPError as error:
        error.close()
        return False
    except (urllib.error.URLError, OSError):
        return False


# --- pytest plugin ---------------------------------------------------------------------

PLANE = pytest.StashKey[ControlPlane]()


def in_ci() -> bool:
    """Whether we run in CI, where a missing control plane is a failure, not a skip."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


@pytest.fixture(scope="session")
def controlplane(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[ControlPlane]:
    """A running control plane for the whole session, stopped at its end."""
    bin_dir = default_bin_dir()
    message = missing_files_message(bin_dir)
    if message is not None and in_ci():
        pytest.fail(message, pytrace=False)
    if message is not None:
        pytest.skip(message)
    plane = start(tmp_path_factory.mktemp("controlplane"), bin_dir)
    pytestconfig.stash[PLANE] = plane
    try:
        yield plane
    finally:
        del pytestconfig.stash[PLANE]
        plane.stop()


@pytest.fixture(scope="session")
def kube_api(controlplane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    """A kubernetes.client.ApiClient for the control plane, as its admin."""
    config_file = str(controlplane.kubeconfig)
    new_client = kubernetes.config.new_client_from_config  # untyped in kubernetes 37
    with new_client(config_file=config_file) as client:  # type: ignore[no-untyped-call]
        yield client


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the components' log tails to the report of a failed test that used them."""
    report = yield
    plane = item.config.stash.get(PLANE, None)
    if report.failed and plane is not None and "controlplane" in getattr(item, "fixturenames", ()):
        report.sections.append(("control plane logs", plane.log_tails()))
    return report


# --- Command line (hack/controlplane/up.sh and down.sh) --------------------------------


def serve(state_dir: Path, bin_dir: Path) -> int:
    """Run the control plane in the foreground until SIGTERM or Ctrl-C, then stop it."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    plane = start(state_dir, bin_dir)
    (state_dir / "ready").write_text(plane.server)
    print(
        f"control plane ready at {plane.server}; export KUBECONFIG={plane.kubeconfig}", flush=True
    )
    try:
        while not stopping.wait(1.0):
            plane.check_running()
    finally:
        (state_dir / "ready").unlink(missing_ok=True)
        plane.stop()
    return 0


def supervisor_pid(state_dir: Path) -> int | None:
    """The pid of a running ``serve`` started by ``up``, checked against pid reuse."""
    pid_file = state_dir / "serve.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"tests.support.controlplane" in cmdline else None


def up(state_dir: Path, bin_dir: Path) -> int:
    """Start ``serve`` in the background, wait until it is ready, print the export line."""
    kubeconfig = state_dir / "kubeconfig"
    if (pid := supervisor_pid(state_dir)) is not None:
        print(
            f"# already running (pid {pid}); stop it with hack/controlplane/down.sh",
            file=sys.stderr,
        )
        print(f"export KUBECONFIG={kubeconfig}")
        return 0
    if (message := missing_files_message(bin_dir)) is not None:
        print(message, file=sys.stderr)
        return 1
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "ready").unlink(missing_ok=True)
    command = [sys.executable, "-m", "tests.support.controlplane", "serve"]
    command += [f"--state-dir={state_dir}", f"--bin-dir={bin_dir}"]
    with (state_dir / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (state_dir / "serve.pid").write_text(str(process.pid))
    ready = lambda: (state_dir / "ready").exists() or process.poll() is not None  # noqa: E731
    wait_for("control plane", ready, timeout=STARTUP_TIMEOUT * 3)
    if process.poll() is not None:
        print((state_dir / "serve.log").read_text(errors="replace"), file=sys.stderr)
        return 1
    print(
        f"# control plane at {(state_dir / 'ready').read_text()}; logs in {state_dir / 'logs'}",
        file=sys.stderr,
    )
    print(f"export KUBECONFIG={kubeconfig}")
    return 0


def down(state_dir: Path, bin_dir: Path) -> int:
    """Stop the ``serve`` that ``up`` started, and wait until its components are gone."""
    pid = supervisor_pid(state_dir)
    if pid is None:
        print("# control plane not running", file=sys.stderr)
        return 0
    os.kill(pid, signal.SIGTERM)
    wait_for(f"pid {pid} to exit", lambda: not Path(f"/proc/{pid}").exists(), timeout=60)
    (state_dir / "serve.pid").unlink(missing_ok=True)
    print(f"# control plane stopped (pid {pid})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``up``, ``down`` or ``serve``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.controlplane",
        description="Run the integration tests' Kubernetes control plane for people.",
    )
    parser.add_argument("command", choices=["up", "down", "serve"])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".cache" / "cluster")
    parser.add_argument("--bin-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    commands = {"up": up, "down": down, "serve": serve}
    return commands[args.command](args.state_dir.resolve(), args.bin_dir or default_bin_dir())


if __name__ == "__main__":
    sys.exit(main())
