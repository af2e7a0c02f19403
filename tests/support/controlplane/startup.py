"""Bringing a control plane up: each component's flags, the start-up order and its checks.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run on free loopback
ports, as controller-runtime's envtest does, with one kwok fake node so that pods are scheduled
and become Ready without a kubelet. :func:`start` writes the certificates (:mod:`.pki`),
launches the binaries into a :class:`.cluster.ControlPlane` and returns once a pod could run;
the fixture in :mod:`.plugin` and ``serve`` in :mod:`.cli` call it.
"""

from __future__ import annotations

import functools
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.controlplane import cluster, pki

FAKE_NODE = "kwok-node-0"
STARTUP_TIMEOUT = 60.0


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


def apiserver_args(plane: cluster.ControlPlane, port: int, etcd_port: int) -> list[str]:
    """The API server with real RBAC and ServiceAccount tokens, serving on loopback only.

    The endpoint reconciler is off: it would publish 127.0.0.1 as the endpoint of Service
    ``kubernetes``, so the API server refuses to start with it ("may not be in the loopback
    range"), and nothing in-cluster needs that endpoint.
    """
    certs = plane.pki
    return [
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={plane.state_dir / 'apiserver'}",
        f"--tls-cert-file={certs / 'apiserver.crt'}",
        f"--tls-private-key-file={certs / 'apiserver.key'}",
        f"--client-ca-file={certs / 'ca.crt'}",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={certs / 'sa.pub'}",
        f"--service-account-signing-key-file={certs / 'sa.key'}",
        f"--service-cluster-ip-range={pki.SERVICE_CIDR}",
        "--authorization-mode=RBAC",
        "--allow-privileged=true",
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]


def controller_manager_args(plane: cluster.ControlPlane) -> list[str]:
    """Every default controller (garbage collector, deployments, service accounts, …)."""
    return [
        f"--kubeconfig={plane.kubeconfig}",
        "--controllers=*",
        "--leader-elect=false",
        "--secure-port=0",
        f"--service-account-private-key-file={plane.pki / 'sa.key'}",
        f"--root-ca-file={plane.pki / 'ca.crt'}",
        f"--service-cluster-ip-range={pki.SERVICE_CIDR}",
        "--profiling=false",
    ]


def scheduler_args(plane: cluster.ControlPlane) -> list[str]:
    """The default scheduler, without leader election or a serving port."""
    return [f"--kubeconfig={plane.kubeconfig}", "--leader-elect=false", "--secure-port=0"]


def kwok_args(plane: cluster.ControlPlane) -> list[str]:
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


def node_ready(plane: cluster.ControlPlane) -> bool:
    """Whether kwok has marked the fake node Ready."""
    status, node = plane.request("GET", f"/api/v1/nodes/{FAKE_NODE}")
    conditions = node.get("status", {}).get("conditions", []) if status == 200 else []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def start(state_dir: Path, bin_dir: Path) -> cluster.ControlPlane:
    """Start every component and return once a pod in ``default`` could run.

    That is: the API server is ready, kwok reports the fake node Ready, and the
    controller-manager has made the ``default`` ServiceAccount (pods are refused before).
    """
    for stale in ("pki", "etcd", "apiserver", "logs"):  # a previous `serve` left them
        shutil.rmtree(state_dir / stale, ignore_errors=True)
    etcd_port, peer_port, api_port = cluster.free_ports(3)
    plane = cluster.ControlPlane(state_dir, bin_dir, server=f"https://127.0.0.1:{api_port}")
    pki.write_pki(plane.pki)
    pki.write_kubeconfig(plane.kubeconfig, plane.server, plane.pki)
    try:
        bring_up(plane, etcd_port, peer_port, api_port)
    except BaseException as error:
        tails = plane.log_tails()
        plane.stop()
        if isinstance(error, cluster.StartupError | TimeoutError):
            raise cluster.StartupError(f"{error}\n{tails}") from None
        raise
    return plane


def bring_up(plane: cluster.ControlPlane, etcd_port: int, peer_port: int, api_port: int) -> None:
    """Launch the components in dependency order, waiting where the next one needs it."""
    plane.launch("etcd", etcd_args(plane.state_dir, etcd_port, peer_port))
    cluster.wait_for(
        "etcd healthy",
        functools.partial(etcd_healthy, etcd_port),
        STARTUP_TIMEOUT,
        plane.check_running,
    )
    plane.launch("kube-apiserver", apiserver_args(plane, api_port, etcd_port))
    api_ready = functools.partial(exists, plane, "/readyz")
    cluster.wait_for("kube-apiserver /readyz", api_ready, STARTUP_TIMEOUT, plane.check_running)
    plane.launch("kube-controller-manager", controller_manager_args(plane))
    plane.launch("kube-scheduler", scheduler_args(plane))
    plane.launch("kwok", kwok_args(plane))
    status, body = plane.request("POST", "/api/v1/nodes", fake_node())
    if status != 201:
        raise cluster.StartupError(f"creating node {FAKE_NODE}: HTTP {status} {body}")
    cluster.wait_for(
        "fake node Ready",
        functools.partial(node_ready, plane),
        STARTUP_TIMEOUT,
        plane.check_running,
    )
    account = functools.partial(exists, plane, "/api/v1/namespaces/default/serviceaccounts/default")
    cluster.wait_for(
        "ServiceAccount default/default", account, STARTUP_TIMEOUT, plane.check_running
    )


def exists(plane: cluster.ControlPlane, path: str) -> bool:
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
