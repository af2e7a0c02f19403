"""The control plane's pytest side: session fixtures and a report hook for failed tests.

``controlplane`` starts one control plane per session (skipping without the binaries, failing
in CI) and ``kube_api`` gives a Kubernetes client for it; the hook adds the components' log
tails to the report of a failed test that used them. The package ``tests.support.controlplane``
re-exports all three, so ``pytest_plugins = ["tests.support.controlplane"]`` (as in
``tests/conftest.py``) finds them there; this module is not registered on its own.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import kubernetes
import pytest

from tests.support.controlplane import binaries, cluster, startup

PLANE = pytest.StashKey[cluster.ControlPlane]()


def in_ci() -> bool:
    """Whether we run in CI, where a missing control plane is a failure, not a skip."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


@pytest.fixture(scope="session")
def controlplane(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[cluster.ControlPlane]:
    """A running control plane for the whole session, stopped at its end."""
    bin_dir = binaries.default_bin_dir()
    message = binaries.missing_files_message(bin_dir)
    if message is not None and in_ci():
        pytest.fail(message, pytrace=False)
    if message is not None:
        pytest.skip(message)
    plane = startup.start(tmp_path_factory.mktemp("controlplane"), bin_dir)
    pytestconfig.stash[PLANE] = plane
    try:
        yield plane
    finally:
        del pytestconfig.stash[PLANE]
        plane.stop()


@pytest.fixture(scope="session")
def kube_api(controlplane: cluster.ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
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
