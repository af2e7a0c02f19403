"""Pure builders: a policy in, the objects its proxy is made of out, as plain dicts.

ConfigMap (the rendered config), Deployment, Service, PodDisruptionBudget (more than one pod
at the least), HorizontalPodAutoscaler (`proxy.autoscaling`) and ServiceMonitor (asked for,
and its CRD served); and the admin token's Secret, made once (`admin_secret`). Every object
carries the policy as its controlling owner, so the garbage collector removes them with it and
no finalizer is needed. No kopf and no I/O: `reconcile` applies what `desired()` returns;
tests/operator tests it as tables. `proxyconfig` renders the config these objects mount.

The ConfigMap is content-addressed: named after the config's hash, immutable, and referenced
by the pod template. A change the API server refuses at the Deployment therefore never reaches
the running pods through their mounted file (they keep reading the config they were rolled
out with), and a revert to any earlier spec is just another apply. `reconcile` prunes the
policy's other ConfigMaps once a rollout is complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sluice.api import policies
from sluice.operator import proxyconfig

Obj = dict[str, Any]

MANAGER = "sluice-operator"
CHECKSUM_ANNOTATION = "sluice.dev/config-checksum"
SECRETS_ANNOTATION = "sluice.dev/secrets-checksum"
# Of the config's hash in the ConfigMap's name: 40 bits, so a collision needs ~10^6 configs.
CONFIG_HASH_CHARACTERS = 10
POLICY_LABEL = "sluice.dev/policy"
MANAGED_BY = {"app.kubernetes.io/managed-by": MANAGER}
# The image's user (Dockerfile); stated here too, so runAsNonRoot can be checked by the kubelet.
PROXY_UID = 65532
# Before SIGTERM, give Services and ingresses time to stop sending new requests.
PRESTOP_SLEEP_SECONDS = 5
# Beyond the proxy's own grace: interpreter exit, closing pools and sockets.
EXIT_MARGIN_SECONDS = 5


@dataclasses.dataclass(frozen=True)
class Ref:
    """An object to delete if it exists: one the policy no longer asks for."""

    api_version: str
    kind: str
    namespace: str
    name: str


@dataclasses.dataclass(frozen=True)
class Desired:
    """What a policy should be made of: objects to apply (in order) and objects to remove."""

    apply: tuple[Obj, ...]
    delete: tuple[Ref, ...]

    def find(self, kind: str) -> Obj | None:
        """The object of this kind, if one is to be applied."""
        return next((obj for obj in self.apply if obj["kind"] == kind), None)


def child_name(kind: str, policy_name: str) -> str:
    """The name shared by every object of a policy (`policies.Kind.child_name`)."""
    return policies.KINDS[kind].child_name(policy_name)


def name_of(policy: policies.Policy) -> str:
    """The name of the policy's objects."""
    return child_name(policy.kind, policy.metadata.name)


def endpoint(kind: str, namespace: str, policy_name: str) -> str:
    """The URL clients use: the Service's cluster DNS name, port and API path."""
    host = f"{child_name(kind, policy_name)}.{namespace}.svc"
    return f"http://{host}:{proxyconfig.PORT}{policies.KINDS[kind].endpoint_path}"


def selector_for(kind: str, policy_name: str) -> dict[str, str]:
    """The labels that pick a policy's pods; never changed, since selectors are immutable."""
    instance = child_name(kind, policy_name)
    return {"app.kubernetes.io/name": "sluice-proxy", "app.kubernetes.io/instance": instance}


def selector(policy: policies.Policy) -> dict[str, str]:
    """The labels that pick the policy's pods."""
    return selector_for(policy.kind, policy.metadata.name)


def label_selector(kind: str, policy_name: str) -> str:
    """The same as a `labelSelector` query parameter."""
    return ",".join(f"{key}={value}" for key, value in selector_for(kind, policy_name).items())


def labels(policy: policies.Policy) -> dict[str, str]:
    """Labels of every object: the selector, who manages it, and which policy it serves."""
    component = f"{policies.KINDS[policy.kind].suffix}-proxy"
    return {
        **selector(policy),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "sluice",
        **MANAGED_BY,
        POLICY_LABEL: policy.metadata.name,
    }


def owner_reference(policy: policies.Policy) -> Obj:
    """The policy as controlling owner; blockOwnerDeletion keeps foreground deletion honest."""
    return {
        "apiVersion": policy.api_version,
        "kind": policy.kind,
        "name": policy.metadata.name,
        "uid": policy.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owner_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the policy controlling an object, or None when no policy does."""
    for ref in obj.get("metadata", {}).get("ownerReferences", []):
        if ref.get("controller") and ref.get("apiVersion") == policies.API_VERSION:
            return ref["kind"], ref["name"]
    return None


def metadata(policy: policies.Policy) -> Obj:
    """Name, namespace, labels and owner: the same for every object of the policy."""
    return {
        "name": name_of(policy),
        "namespace": policy.metadata.namespace,
        "labels": labels(policy),
        "ownerReferences": [owner_reference(policy)],
    }


def config_map_name(policy: policies.Policy, rendered: proxyconfig.Rendered) -> str:
    """`<policy>-<llm|mcp>-<config hash>`: one ConfigMap per config, never rewritten."""
    return f"{name_of(policy)}-{rendered.checksum[:CONFIG_HASH_CHARACTERS]}"


def config_map(policy: policies.Policy, rendered: proxyconfig.Rendered) -> Obj:
    """The proxy's config file. Secrets appear in it only as environment variable names."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**metadata(policy), "name": config_map_name(policy, rendered)},
        "immutable": True,
        "data": {proxyconfig.CONFIG_FILE: rendered.text},
    }


def mounted_config(deployment: Mapping[str, Any]) -> str | None:
    """The name of the ConfigMap a Deployment's pods mount as their config."""
    volumes = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])
    config: Mapping[str, Any] = next((v for v in volumes if v.get("name") == "config"), {})
    name: str | None = config.get("configMap", {}).get("name")
    return name


def admin_secret(policy: policies.Policy, token: str) -> Obj:
    """The Secret of the admin API's token, when the spec names none; created once, kept."""
    ref = proxyconfig.admin_token(policy)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {**metadata(policy), "name": ref.name},
        "type": "Opaque",
        "stringData": {ref.key: token},
    }


def environment(rendered: proxyconfig.Rendered) -> Obj:
    """`env` and `envFrom` of the proxy container: values only ever by Secret reference."""
    env = [
        {"name": e.env, "valueFrom": {"secretKeyRef": {"name": e.secret, "key": e.key}}}
        for e in rendered.env
    ]
    env_from = [{"prefix": e.prefix, "secretRef": {"name": e.secret}} for e in rendered.env_from]
    # Absent rather than empty: an applied empty list would still claim the field as ours.
    return {key: value for key, value in (("env", env), ("envFrom", env_from)) if value}


def container(policy: policies.Policy, rendered: proxyconfig.Rendered, image: str) -> Obj:
    """The proxy container: `sluice proxy --config`, probes, limits, a locked-down context."""
    config_path = f"{proxyconfig.CONFIG_DIR}/{proxyconfig.CONFIG_FILE}"
    http_get = {"port": "http"}
    return {
        "name": "proxy",
        "image": policy.spec.proxy.image or image,
        "command": ["sluice"],
        "args": ["proxy", "--config", config_path],
        "ports": [
            {"name": "http", "containerPort": proxyconfig.PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": proxyconfig.ADMIN_PORT, "protocol": "TCP"},
        ],
        **environment(rendered),
        "startupProbe": {
            "httpGet": {**http_get, "path": "/healthz"},
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
        "livenessProbe": {
            "httpGet": {**http_get, "path": "/healthz"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {**http_get, "path": "/readyz"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        # The proxy drains on SIGTERM itself; the pause before lets endpoints catch up first.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "resources": policy.spec.proxy.resources.model_dump(by_alias=True),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": proxyconfig.CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def pod_spec(policy: policies.Policy, rendered: proxyconfig.Rendered, image: str) -> Obj:
    """Pod spec: restricted Pod Security level, no API token, no service-link env vars."""
    grace = PRESTOP_SLEEP_SECONDS + policy.spec.proxy.shutdown_grace_seconds + EXIT_MARGIN_SECONDS
    return {
        "containers": [container(policy, rendered, image)],
        "volumes": [
            {"name": "config", "configMap": {"name": config_map_name(policy, rendered)}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": grace,
        "automountServiceAccountToken": False,
        # Service links would put `<SERVICE>_PORT`-style variables beside the proxy's own.
        "enableServiceLinks": False,
    }


def deployment(
    policy: policies.Policy, rendered: proxyconfig.Rendered, image: str, secrets_checksum: str
) -> Obj:
    """The proxy Deployment; the config and Secrets checksums on the pod template roll the pods
    when either changes. With autoscaling, `replicas` is left to the autoscaler."""
    replicas = {} if policy.spec.proxy.autoscaling else {"replicas": policy.spec.proxy.replicas}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(policy),
        "spec": {
            **replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(policy)},
            # Surge first: a new pod is ready before an old one goes, even with one replica.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels(policy),
                    "annotations": {
                        CHECKSUM_ANNOTATION: rendered.checksum,
                        SECRETS_ANNOTATION: secrets_checksum,
                        "kubectl.kubernetes.io/default-container": "proxy",
                    },
                },
                "spec": pod_spec(policy, rendered, image),
            },
        },
    }


def service(policy: policies.Policy) -> Obj:
    """The ClusterIP Service clients use; the admin port stays off it."""
    port = {
        "name": "http",
        "port": proxyconfig.PORT,
        "targetPort": "http",
        "protocol": "TCP",
        "appProtocol": "http",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(policy),
        "spec": {"type": "ClusterIP", "selector": selector(policy), "ports": [port]},
    }


def pod_disruption_budget(policy: policies.Policy) -> Obj:
    """At most one proxy pod evicted at a time; unhealthy pods never block a node drain."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(policy),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(policy)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def autoscaler(policy: policies.Policy) -> Obj:
    """The HorizontalPodAutoscaler (autoscaling/v2) of the proxy Deployment, on CPU."""
    asked = policy.spec.proxy.autoscaling or policies.AutoscalingSpec()
    target = {"type": "Utilization", "averageUtilization": asked.target_cpu_utilization}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(policy),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": name_of(policy),
            },
            "minReplicas": asked.min_replicas,
            "maxReplicas": asked.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
        },
    }


def service_monitor(policy: policies.Policy) -> Obj:
    """The Prometheus Operator's scrape config for the proxy's `/metrics`."""
    endpoint_ = {"port": "http", "path": "/metrics", "interval": policy.spec.metrics.interval}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(policy),
        "spec": {"selector": {"matchLabels": selector(policy)}, "endpoints": [endpoint_]},
    }


def ref(obj: Obj) -> Ref:
    """The reference of a built object, for deleting it."""
    meta = obj["metadata"]
    return Ref(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])


def desired(
    policy: policies.Policy,
    rendered: proxyconfig.Rendered,
    image: str,
    service_monitors_served: bool,
    secrets_checksum: str,
) -> Desired:
    """Everything the policy is made of. The ConfigMap goes first, so new pods mount it, then
    the Deployment: when the API server refuses it, nothing else has changed."""
    proxy = policy.spec.proxy
    # Optional objects: (whether wanted, the object). Unwanted ones are deleted if they exist.
    optional = [
        (proxy.fewest_replicas > 1, pod_disruption_budget(policy)),
        (proxy.autoscaling is not None, autoscaler(policy)),
    ]
    if service_monitors_served:
        optional.append((policy.spec.metrics.service_monitor, service_monitor(policy)))
    always = [
        config_map(policy, rendered),
        deployment(policy, rendered, image, secrets_checksum),
        service(policy),
    ]
    return Desired(
        apply=(*always, *(obj for wanted, obj in optional if wanted)),
        delete=tuple(ref(obj) for wanted, obj in optional if not wanted),
    )
