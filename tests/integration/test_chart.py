"""The Helm chart: lint, server-side validation, its CRDs, and the operator under its RBAC.

helm and kubectl are the pinned binaries beside the control plane's. The RBAC test applies only
the chart's ServiceAccount and roles, signs the operator in with a token of that ServiceAccount
(not as admin), and drives every verb the operator uses: apply, delete, Secret checks, Events,
status patches. A verb missing from the chart shows up as a policy that never gets Ready.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from sluice.api import crds as generated
from sluice.operator import metrics as operator_metrics
from sluice.proxy import metrics as proxy_metrics
from tests.support import controlplane as cp
from tests.support import operator as op

pytestmark = pytest.mark.integration

CHART = cp.REPO / "charts" / "sluice"
RELEASE = "sluice"
ACCOUNT = "sluice"  # sluice.fullname for release "sluice"
EVERYTHING = [
    "--set=prometheus.serviceMonitor.enabled=true",
    "--set=prometheus.rules.enabled=true",
    "--set=grafana.dashboards.enabled=true",
]
PROMETHEUS_RULE_CRD = {
    **op.SERVICE_MONITOR_CRD,
    "metadata": {"name": "prometheusrules.monitoring.coreos.com"},
    "spec": {
        **op.SERVICE_MONITOR_CRD["spec"],
        "names": {"plural": "prometheusrules", "singular": "prometheusrule",
                  "kind": "PrometheusRule", "listKind": "PrometheusRuleList"},
    },
}  # fmt: skip


def helm(plane: cp.ControlPlane, *args: str) -> str:
    result = subprocess.run(
        [str(plane.bin_dir / "helm"), *args], env=plane.env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def template(plane: cp.ControlPlane, namespace: str, *args: str) -> str:
    return helm(plane, "template", RELEASE, str(CHART), f"--namespace={namespace}", *args)


@pytest.fixture
def system_namespace(controlplane: cp.ControlPlane) -> Iterator[str]:
    """The namespace the chart is installed into."""
    name = f"sluice-{uuid.uuid4().hex[:6]}"
    controlplane.kubectl("create", "namespace", name)
    yield name
    controlplane.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def monitoring_crds(controlplane: cp.ControlPlane) -> cp.ControlPlane:
    """Stand-ins for the Prometheus Operator's CRDs (schema-less specs), for dry runs."""
    for crd in (op.SERVICE_MONITOR_CRD, PROMETHEUS_RULE_CRD):
        controlplane.kubectl("apply", "-f", "-", input=yaml.safe_dump(crd))
        name = f"crd/{crd['metadata']['name']}"
        controlplane.kubectl("wait", "--for=condition=Established", "--timeout=60s", name)
    return controlplane


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="defaults"),
        pytest.param(["--set=operator.namespaces={team-a,team-b}", *EVERYTHING], id="all"),
        pytest.param(["--set=crds.enabled=false", "--set=image.digest=sha256:" + "a" * 64],
                     id="no-crds-digest"),
    ],
)  # fmt: skip
def test_helm_lint_strict_passes(controlplane: cp.ControlPlane, values: list[str]) -> None:
    helm(controlplane, "lint", "--strict", str(CHART), *values)


def test_helm_lint_rejects_values_outside_the_schema(controlplane: cp.ControlPlane) -> None:
    result = subprocess.run(
        [str(controlplane.bin_dir / "helm"), "lint", "--strict", str(CHART),
         "--set=operator.logLevel=loud"],
        env=controlplane.env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "logLevel" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="cluster-wide"),
        pytest.param(["--set=operator.namespaces={default}"], id="namespaced"),
        pytest.param(EVERYTHING, id="monitoring"),
        pytest.param(["--set=networkPolicy.enabled=true",
                      "--set=networkPolicy.namespaces={default}",
                      "--set=networkPolicy.from={apps}"], id="network-policy"),
    ],
)  # fmt: skip
def test_rendered_chart_is_accepted_by_the_api_server(
    monitoring_crds: cp.ControlPlane, system_namespace: str, values: list[str]
) -> None:
    manifest = template(monitoring_crds, system_namespace, *values)
    result = monitoring_crds.kubectl(
        "apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", "-",
        input=manifest,
    )  # fmt: skip
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest) if doc}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount"} <= kinds
    assert "serverside-applied (server dry run)" in result.stdout


def test_chart_crds_are_the_generated_ones_and_are_kept_on_uninstall(
    controlplane: cp.ControlPlane,
) -> None:
    documents = yaml.safe_load_all(template(controlplane, "default"))
    rendered = {d["metadata"]["name"]: d for d in documents if d and d["kind"].startswith("Custom")}
    expected = {crd["metadata"]["name"]: crd for crd in generated.definitions()}
    assert rendered.keys() == expected.keys()
    for name, crd in rendered.items():
        assert crd["spec"] == expected[name]["spec"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def apply_rbac(plane: cp.ControlPlane, namespace: str, *values: str) -> pathlib.Path:
    """Apply the chart's CRDs, ServiceAccount and roles only; return a token kubeconfig."""
    shown = ["templates/crds.yaml", "templates/operator-serviceaccount.yaml",
             "templates/operator-rbac.yaml"]  # fmt: skip
    manifest = template(plane, namespace, *values, *(f"--show-only={s}" for s in shown))
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest)
    path = plane.state_dir / f"{namespace}.kubeconfig"
    return op.token_kubeconfig(plane, namespace, ACCOUNT, path)


def can_i(plane: cp.ControlPlane, namespace: str, system: str, *verb_resource: str) -> bool:
    user = f"--as=system:serviceaccount:{system}:{ACCOUNT}"
    result = plane.kubectl("auth", "can-i", *verb_resource, "-n", namespace, user, check=False)
    return result.stdout.strip() == "yes"


def exercise(plane: cp.ControlPlane, namespace: str) -> None:
    """Every path that needs a verb: create, status, Events, Secret checks, delete."""
    op.apply(plane, namespace, op.EXAMPLES / "llm-policy.yaml")
    op.apply(plane, namespace, op.EXAMPLES / "tool-cache-policy.yaml")
    op.apply(plane, namespace, op.llm_policy("blocked", upstream={
        "apiKeySecretRef": {"name": "absent", "key": "k"}}))  # fmt: skip
    op.ready_policy(plane, namespace, "lbp", "openai")
    op.ready_policy(plane, namespace, "tcp", "tools")
    op.wait_for(
        "a Warning event",
        lambda: op.events(plane, namespace, "blocked", "SecretNotFound"),
    )
    autoscaled = {"autoscaling": {"minReplicas": 1, "maxReplicas": 2}}
    op.apply(plane, namespace, op.llm_policy("scaled", proxy=autoscaled))
    op.wait_for("an HPA", lambda: op.get(plane, namespace, "horizontalpodautoscaler/scaled-llm"))
    off = {"spec": {"proxy": {"autoscaling": None}}}
    plane.kubectl("-n", namespace, "patch", "lbp/scaled", "--type=merge", "-p", json.dumps(off))
    op.wait_for(
        "the HPA deleted",
        lambda: op.get(plane, namespace, "horizontalpodautoscaler/scaled-llm") is None,
    )
    patch = {"spec": {"proxy": {"replicas": 1}, "metrics": {"serviceMonitor": False}}}
    plane.kubectl("-n", namespace, "patch", "lbp/openai", "--type=merge", "-p", json.dumps(patch))
    op.wait_for(
        "budget and monitor deleted",
        lambda: (
            op.get(plane, namespace, "poddisruptionbudget/openai-llm") is None
            and op.get(plane, namespace, "servicemonitor/openai-llm") is None
        ),
    )


@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster-wide", "namespaced"])
def test_the_operator_runs_with_exactly_the_charts_rbac(
    monitoring_crds: cp.ControlPlane,
    system_namespace: str,
    tmp_path: pathlib.Path,
    namespaced: bool,
) -> None:
    plane = monitoring_crds
    workload = f"apps-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", workload)
    values = [f"--set=operator.namespaces={{{workload}}}"] if namespaced else []
    kubeconfig = apply_rbac(plane, system_namespace, *values)
    namespaces = (workload,) if namespaced else ()
    process = op.OperatorProcess(plane, tmp_path, kubeconfig, namespaces=namespaces).start()
    try:
        exercise(plane, workload)
    except BaseException:
        print(f"--- operator log ---\n{process.log()[-20000:]}")
        raise
    finally:
        process.stop()
        plane.kubectl("delete", "namespace", workload, "--wait=false")
    # kopf says APIForbiddenError, the operator's own client "HTTP 403 Forbidden". A namespace
    # that another test is deleting refuses new objects with a 403 too: no gap in the RBAC.
    lines = process.log().lower().splitlines()
    denied = [line for line in lines if "forbidden" in line and "being terminated" not in line]
    assert not denied


@pytest.mark.parametrize(
    ("verb_resource", "allowed"),
    [
        pytest.param(("get", "secrets"), True, id="get-secrets"),
        pytest.param(("list", "secrets"), False, id="no-list-secrets"),
        pytest.param(("patch", "deployments.apps"), True, id="patch-deployments"),
        pytest.param(("delete", "deployments.apps"), False, id="no-delete-deployments"),
        pytest.param(("create", "pods"), False, id="no-create-pods"),
        pytest.param(("list", "customresourcedefinitions.apiextensions.k8s.io"), False,
                     id="no-crd-listing"),
        pytest.param(("patch", "llmbatchpolicies.sluice.dev", "--subresource=status"), True,
                     id="patch-status"),
        pytest.param(("create", "secrets"), True, id="create-secrets"),
        pytest.param(("update", "secrets"), False, id="no-update-secrets"),
        pytest.param(("delete", "configmaps"), True, id="delete-configmaps"),
        pytest.param(("create", "horizontalpodautoscalers.autoscaling"), True, id="create-hpa"),
        pytest.param(("delete", "horizontalpodautoscalers.autoscaling"), True, id="delete-hpa"),
    ],
)  # fmt: skip
def test_the_charts_rbac_grants_no_more_than_the_operator_uses(
    controlplane: cp.ControlPlane,
    system_namespace: str,
    verb_resource: tuple[str, ...],
    allowed: bool,
) -> None:
    apply_rbac(controlplane, system_namespace)
    assert can_i(controlplane, "default", system_namespace, *verb_resource) is allowed


def test_namespaced_rbac_reaches_only_the_namespaces_named(
    controlplane: cp.ControlPlane, system_namespace: str
) -> None:
    apply_rbac(controlplane, system_namespace, "--set=operator.namespaces={default}")
    assert can_i(controlplane, "default", system_namespace, "patch", "deployments.apps")
    assert not can_i(controlplane, "kube-system", system_namespace, "patch", "deployments.apps")


def test_the_network_policy_admits_only_the_service_port_from_the_namespaces_named(
    controlplane: cp.ControlPlane, system_namespace: str
) -> None:
    proxies = f"apps-{uuid.uuid4().hex[:6]}"
    controlplane.kubectl("create", "namespace", proxies)
    values = [
        "--set=networkPolicy.enabled=true",
        f"--set=networkPolicy.namespaces={{{proxies}}}",
        "--set=networkPolicy.from={frontend,batch}",
        "--set=networkPolicy.metricsFrom={monitoring}",
        "--show-only=templates/proxies-networkpolicy.yaml",
    ]
    manifest = template(controlplane, system_namespace, *values)
    controlplane.kubectl("apply", "--server-side", "-f", "-", input=manifest)
    try:
        stored = op.get(controlplane, proxies, f"networkpolicy/{RELEASE}-proxies")
    finally:
        controlplane.kubectl("delete", "namespace", proxies, "--wait=false")
    assert stored is not None
    spec = stored["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "sluice-proxy"}}
    assert spec["policyTypes"] == ["Ingress"]
    admitted = {
        source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in spec["ingress"]
        for source in rule["from"]
    }
    assert admitted == {"frontend", "batch", "monitoring", system_namespace}
    # The operator reads the pods' /metrics for the status: its own pods, not its namespace's.
    (operator,) = [s for rule in spec["ingress"] for s in rule["from"] if "podSelector" in s]
    assert operator["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    ports = [port for rule in spec["ingress"] for port in rule["ports"]]
    assert ports == [{"port": "http", "protocol": "TCP"}] * 3  # never the admin port


def test_a_network_policy_without_namespaces_is_refused_by_name(
    controlplane: cp.ControlPlane,
) -> None:
    result = subprocess.run(
        [str(controlplane.bin_dir / "helm"), "template", RELEASE, str(CHART),
         "--set=networkPolicy.enabled=true"],
        env=controlplane.env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "networkPolicy.namespaces" in result.stderr


# The series a metric family exposes, by type; `_created` is turned off on both sides.
SERIES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
METRIC = re.compile(r"\b(?:sluice|process|python)_[a-z0-9_]+\b")
RUNTIME_PREFIXES = ("process_", "python_")
"""prometheus_client's default collectors (process, GC), which both processes export."""


def series_names(module: types.ModuleType) -> set[str]:
    """Every series the metrics declared in `module` expose, whether they have samples or not."""
    names: set[str] = set()
    for value in vars(module).values():
        describe = getattr(value, "describe", None)
        if isinstance(value, type) or not callable(describe):
            continue
        for family in describe():
            names |= {family.name + suffix for suffix in SERIES[family.type]}
    return names


def runtime_series() -> set[str]:
    """The series of prometheus_client's default process and GC collectors."""
    return {
        sample.name
        for family in REGISTRY.collect()
        if family.name.startswith(RUNTIME_PREFIXES)
        for sample in family.samples
    }


def promql() -> list[Any]:
    """Every PromQL expression of the chart, with the series it may name: the dashboard's and
    the rules' (read from the template's text: it is a Go template, YAML only once rendered)."""
    runtime = runtime_series()
    proxy = series_names(proxy_metrics) | runtime
    operator = series_names(operator_metrics) | runtime
    dashboard = json.loads((CHART / "files/dashboards/sluice-proxies.json").read_text())
    found = [
        pytest.param(target["expr"], proxy, id=f"dashboard/{panel['title']}/{target['refId']}")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    template = (CHART / "templates/proxies-prometheusrule.yaml").read_text()
    groups = re.split(r"^    - name: (\S+)\n", template, flags=re.MULTILINE)
    allowed = {"sluice-proxies": proxy, "sluice-mcp": proxy, "sluice-operator": operator}
    for group, body in zip(groups[1::2], groups[2::2], strict=True):
        rules = re.findall(r"- alert: (\S+)\n(?:\s*#.*\n)*\s*expr: \|\n((?: {12}.*\n)+)", body)
        assert len(rules) == body.count("- alert:"), f"an alert of {group} was not read"
        found += [pytest.param(expr, allowed[group], id=f"rules/{alert}") for alert, expr in rules]
    return found


@pytest.mark.parametrize(("expression", "series"), promql())
def test_each_promql_expression_of_the_chart_names_only_series_sluice_exports(
    expression: str, series: set[str]
) -> None:
    """Pure, no cluster: a renamed metric or a missing `_total` shows here, not as a blank panel."""
    named = set(METRIC.findall(expression))
    assert named, "no metric of the proxies in it"
    assert named <= series, f"not exported: {sorted(named - series)}"


def test_the_dashboard_has_its_rows_and_the_rules_alert_on_mcp_servers() -> None:
    dashboard = json.loads((CHART / "files/dashboards/sluice-proxies.json").read_text())
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert {"Traffic", "Upstream", "Batching", "Cache", "Tokens and cost", "MCP",
            "Process"} <= set(rows)  # fmt: skip
    template = (CHART / "templates/proxies-prometheusrule.yaml").read_text()
    assert {"SluiceMCPServerDown", "SluiceToolCallFailureRate"} <= set(
        re.findall(r"- alert: (\S+)", template)
    )


def test_the_dashboard_is_grafana_json_whose_panels_do_not_overlap() -> None:
    """What Grafana's import checks and what a hand edit breaks: unique ids, a data source on
    every query panel, panels on the 24-column grid without overlap."""
    dashboard = json.loads((CHART / "files/dashboards/sluice-proxies.json").read_text())
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "sluice-proxies"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
