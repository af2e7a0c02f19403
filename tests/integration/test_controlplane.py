"""The test control plane itself: its controllers, scheduler, kwok and API server do their jobs.

These guard the fixtures of tests/support/controlplane/ that the operator's integration
tests stand on: when one of these fails, look there before suspecting the operator.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support import controlplane as cp

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace(kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (the namespace controller empties it)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def deployment_owned_by(owner: client.V1ObjectMeta, replicas: int) -> client.V1Deployment:
    """A Deployment whose only owner is the ConfigMap ``owner``, so deleting that collects it."""
    labels = {"app": "owned"}
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name=str(owner.name), uid=str(owner.uid)
    )
    # kwok pretends to run pods, so the image is never pulled.
    container = client.V1Container(name="app", image="registry.invalid/never-pulled:1")
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name="owned", owner_references=[reference]),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[container]),
            ),
        ),
    )


def is_available(apps: client.AppsV1Api, namespace: str, name: str) -> bool:
    """Whether the Deployment reports condition Available=True."""
    status = apps.read_namespaced_deployment_status(name, namespace).status
    conditions = (status.conditions if status else None) or []
    return any(c.type == "Available" and c.status == "True" for c in conditions)


def is_gone(apps: client.AppsV1Api, namespace: str, name: str) -> bool:
    """Whether the Deployment no longer exists."""
    try:
        apps.read_namespaced_deployment(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def test_deployment_becomes_available_on_the_kwok_node_and_is_collected_with_its_owner(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    assert owner.metadata is not None
    apps.create_namespaced_deployment(namespace, deployment_owned_by(owner.metadata, replicas=2))

    cp.wait_for("Deployment Available", lambda: is_available(apps, namespace, "owned"))
    pods = core.list_namespaced_pod(namespace, label_selector="app=owned").items
    assert [(p.spec and p.spec.node_name, p.status and p.status.phase) for p in pods] == [
        (cp.FAKE_NODE, "Running"),
        (cp.FAKE_NODE, "Running"),
    ]

    core.delete_namespaced_config_map("owner", namespace)
    cp.wait_for("Deployment garbage-collected", lambda: is_gone(apps, namespace, "owned"))


def test_api_server_rejects_a_crd_whose_schema_is_not_structural(
    controlplane: cp.ControlPlane,
) -> None:
    untyped_spec = {"properties": {"size": {"type": "integer"}}}  # no "type: object"
    schema = {"type": "object", "properties": {"spec": untyped_spec}}
    version = {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.sluice.dev"},
        "spec": {
            "group": "test.sluice.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [version],
        },
    }

    result = controlplane.kubectl("apply", "--filename=-", input=json.dumps(crd), check=False)

    assert result.returncode != 0
    assert "properties[spec].type: Required value" in result.stderr


def test_kubectl_reports_the_pinned_server_version(controlplane: cp.ControlPlane) -> None:
    result = controlplane.kubectl("version", "--output=json")

    server = json.loads(result.stdout)["serverVersion"]
    assert server["gitVersion"] == cp.read_versions()["KUBERNETES_VERSION"]
