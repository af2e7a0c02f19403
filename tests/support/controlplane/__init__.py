"""A real Kubernetes control plane for integration tests: a pytest plugin and a small CLI.

It runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on free loopback
ports, as controller-runtime's envtest does, with one kwok fake node so that pods are scheduled
and become Ready without a kubelet (:mod:`.startup`, :mod:`.cluster`, certificates in
:mod:`.pki`). The binaries come from ``hack/controlplane/build.sh``, at the versions pinned in
``hack/controlplane/versions.env`` (:mod:`.binaries`).

As a plugin (``pytest_plugins = ["tests.support.controlplane"]``) it gives the session fixtures
``controlplane`` and ``kube_api``, and adds the components' log tails to the report of a failed
test that used them: :mod:`.plugin`, whose fixtures and hook are re-exported here because pytest
registers only this package. As a program (``python -m tests.support.controlplane
up|down|serve``, wrapped by ``hack/controlplane/up.sh`` and ``down.sh``) it runs the same control
plane for people (:mod:`.cli`).
"""

from tests.support.controlplane.binaries import (
    REPO,
    default_bin_dir,
    missing_files_message,
    read_versions,
)
from tests.support.controlplane.cli import main
from tests.support.controlplane.cluster import (
    Component,
    ControlPlane,
    StartupError,
    free_ports,
    wait_for,
)
from tests.support.controlplane.pki import SERVICE_CIDR
from tests.support.controlplane.plugin import controlplane, kube_api, pytest_runtest_makereport
from tests.support.controlplane.startup import FAKE_NODE, STARTUP_TIMEOUT, start

__all__ = [
    "FAKE_NODE",
    "REPO",
    "SERVICE_CIDR",
    "STARTUP_TIMEOUT",
    "Component",
    "ControlPlane",
    "StartupError",
    "controlplane",
    "default_bin_dir",
    "free_ports",
    "kube_api",
    "main",
    "missing_files_message",
    "pytest_runtest_makereport",
    "read_versions",
    "start",
    "wait_for",
]
