"""The generated CRDs: committed files in step with the models, structural, fully described."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from sluice import cli
from sluice.api import crds

REPO = pathlib.Path(__file__).resolve().parents[2]
COMMITTED = [REPO / "crds", REPO / "charts" / "sluice" / "files" / "crds"]
REGENERATE = "sluice crds --write crds --write charts/sluice/files/crds"
# Keys a structural schema node may carry (apiextensions.k8s.io/v1 JSONSchemaProps in use here).
ALLOWED = {
    "type", "description", "properties", "required", "items", "additionalProperties",
    "default", "nullable", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "maxProperties", "format", "anyOf",
    "x-kubernetes-int-or-string", "x-kubernetes-validations", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}  # fmt: skip


def schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    for crd in crds.definitions():
        yield crd["spec"]["names"]["kind"], crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below `node`, with its path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("directory", COMMITTED, ids=lambda d: str(d.relative_to(REPO)))
def test_committed_crds_match_the_models(directory: pathlib.Path) -> None:
    committed = {path.name: path.read_text() for path in sorted(directory.glob("*.yaml"))}
    assert committed == crds.rendered(), f"CRDs drifted from sluice.api; run: {REGENERATE}"


@pytest.mark.parametrize(("kind", "schema"), list(schemas()), ids=lambda v: str(v)[:20])
def test_schema_is_structural(kind: str, schema: dict[str, Any]) -> None:
    for path, node in nodes(schema):
        assert set(node) <= ALLOWED, f"{kind}{path}: {set(node) - ALLOWED}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "type" in node, f"{kind}{path} has no type"
            assert "anyOf" not in node, f"{kind}{path}: anyOf outside int-or-string"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{kind}{path}"


@pytest.mark.parametrize(("kind", "schema"), list(schemas()), ids=lambda v: str(v)[:20])
def test_every_field_has_a_description(kind: str, schema: dict[str, Any]) -> None:
    undocumented = [
        path
        for path, node in nodes(schema)
        if path not in ("", ".metadata")
        and not path.endswith(("[]", "{}"))
        and not node.get("description")
    ]
    assert undocumented == []


def test_optional_fields_are_nullable_and_nested_objects_get_their_defaults() -> None:
    spec = dict(schemas())["LLMBatchPolicy"]["properties"]["spec"]
    upstream = spec["properties"]["upstream"]
    assert upstream["properties"]["apiKeySecretRef"]["nullable"] is True
    assert "default" not in upstream["properties"]["apiKeySecretRef"]
    assert spec["default"] == {}
    assert spec["properties"]["batching"]["default"] == {}
    assert spec["properties"]["batching"]["properties"]["maxBatchSize"] == {
        "default": 32,
        "description": "Requests (or embedding inputs) per batch; a full batch is sent at once.",
        "maximum": 2048,
        "minimum": 1,
        "type": "integer",
    }
    timeout = upstream["properties"]["timeoutSeconds"]
    assert (timeout["minimum"], timeout["exclusiveMinimum"]) == (0, True)


def test_cross_field_rules_sit_on_the_objects_they_compare() -> None:
    spec = dict(schemas())["LLMBatchPolicy"]["properties"]["spec"]["properties"]
    rules = {
        name: [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]
        for name, node in spec.items()
    }
    assert any("self.maxKeepaliveConnections <= self.maxConnections" in r for r in rules["pool"])
    assert any("urlSecretRef" in rule for rule in rules["cache"])
    assert any("self.endpoints" in rule and "self.url" in rule for rule in rules["upstream"])


EXTRA_COLUMNS = {"LLMBatchPolicy": ["Deferred"], "ToolCachePolicy": ["Servers", "Tools"]}


def test_names_scope_and_columns() -> None:
    by_kind = {crd["spec"]["names"]["kind"]: crd for crd in crds.definitions()}
    assert by_kind["LLMBatchPolicy"]["spec"]["names"]["shortNames"] == ["lbp"]
    assert by_kind["ToolCachePolicy"]["spec"]["names"]["shortNames"] == ["tcp"]
    for kind, crd in by_kind.items():
        spec = crd["spec"]
        assert (spec["group"], spec["scope"], spec["names"]["categories"]) == (
            "sluice.dev", "Namespaced", ["sluice"],
        )  # fmt: skip
        version = spec["versions"][0]
        assert (version["name"], version["subresources"]) == ("v1alpha1", {"status": {}})
        columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
        assert columns == [
            "Ready",
            "Endpoint",
            "Replicas",
            "Hit ratio",
            *EXTRA_COLUMNS[kind],
            "Age",
        ]


def test_only_the_tool_cache_policy_status_has_servers_and_tools() -> None:
    status = {kind: schema["properties"]["status"]["properties"] for kind, schema in schemas()}
    assert {"servers", "tools"} <= set(status["ToolCachePolicy"])
    assert not {"servers", "tools"} & set(status["LLMBatchPolicy"])
    assert status["ToolCachePolicy"]["servers"]["pattern"] == "^[0-9]+/[0-9]+$"


def test_sluice_crds_prints_both_definitions(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crds"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in documents] == [
        "llmbatchpolicies.sluice.dev",
        "toolcachepolicies.sluice.dev",
    ]


def test_sluice_crds_write_creates_one_file_per_crd(tmp_path: pathlib.Path) -> None:
    assert cli.main(["crds", "--write", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(crds.rendered())


def test_sluice_crds_write_to_an_unwritable_place_is_one_line_and_exit_2(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["crds", "--write", str(blocker / "sub")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
