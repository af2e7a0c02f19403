"""The CRD generator: `sluice.api.policies` in, `CustomResourceDefinition` objects out.

pydantic writes JSON Schema (draft 2020-12); the API server wants a *structural* OpenAPI v3
schema. `structural()` bridges the two: `$ref`s inlined, `title` dropped, `X | None` as
`nullable`, `exclusiveMinimum: n` as `minimum: n, exclusiveMinimum: true`, `int | str` as
`x-kubernetes-int-or-string`, and `default: {}` on nested objects so the API server fills in
their defaults. `sluice crds` prints or writes the result; `crds/` and the chart's copies are
its output, and tests/api/test_crds.py fails when they drift.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import yaml

from sluice.api import policies

Schema = dict[str, Any]

HEADER = "# Generated from sluice.api.policies by `sluice crds --write`; do not edit.\n"
# Not `base.DNS_LABEL`: the name becomes a Service's, which must start with a letter (RFC 1035).
DNS_LABEL_RULE = policies.cel(
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 59",
    "metadata.name must be a lowercase DNS label of at most 59 characters "
    "(it names the proxy's Service, with a 4-character suffix)",
)  # no fieldPath: the API server accepts none into metadata, whose schema it owns
# Keys pydantic writes that a structural schema does not carry.
DROPPED = {"title", "$defs"}


def structural(schema: Schema, defs: dict[str, Schema] | None = None) -> Schema:
    """The structural OpenAPI v3 form of a pydantic JSON Schema node (see the module doc)."""
    defs = schema.get("$defs", {}) if defs is None else defs
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # the field's own description wins over the class's
    node = {key: value for key, value in node.items() if key not in DROPPED}
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]  # unknown fields are pruned (and kubectl warns)
    if "anyOf" in node:
        node = collapse_any_of(node, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound in ("Minimum", "Maximum"):
        if isinstance(node.get(f"exclusive{bound}"), int | float):
            node[bound.lower()] = node[f"exclusive{bound}"]
            node[f"exclusive{bound}"] = True
    if "description" in node:
        node["description"] = unwrap(node["description"])
    if "properties" in node:
        node["properties"] = {
            name: structural(child, defs) for name, child in node["properties"].items()
        }
        default_nested_objects(node)
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    return node


def collapse_any_of(node: Schema, defs: dict[str, Schema]) -> Schema:
    """`X | None` becomes X with `nullable`; `int | str` becomes int-or-string."""
    options = [structural(option, defs) for option in node.pop("anyOf")]
    types = [option.get("type") for option in options]
    if "null" in types:
        options = [option for option in options if option.get("type") != "null"]
        if node.get("default", ...) is None:
            del node["default"]
        node["nullable"] = True
        if len(options) == 1:
            return {**options[0], **node}
    if sorted(str(option.get("type")) for option in options) == ["integer", "string"]:
        # The branches may carry no value checks of their own in a structural schema; on the
        # node, `pattern` applies to the strings only and `minimum` to the integers only.
        string = next(option for option in options if option["type"] == "string")
        integer = next(option for option in options if option["type"] == "integer")
        node["x-kubernetes-int-or-string"] = True
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        node.update({k: string[k] for k in ("pattern", "maxLength") if k in string})
        node.update({k: integer[k] for k in ("minimum",) if k in integer})
        return node
    raise ValueError(f"no structural form for anyOf {types}")


def default_nested_objects(node: Schema) -> None:
    """Give optional nested objects `default: {}`, so the API server fills in their fields.

    pydantic's `default_factory=SomeModel` has no JSON Schema form; without this, a policy that
    leaves out `batching` would show no batching settings at all in `kubectl get -o yaml`.
    """
    required = set(node.get("required", ()))
    for name, child in node["properties"].items():
        nested = child.get("type") == "object" and "properties" in child
        if nested and name not in required and "default" not in child and not child.get("nullable"):
            child["default"] = {}


def unwrap(text: str) -> str:
    """Docstrings are wrapped at 100 columns; a description is one paragraph per blank line."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text.strip())


def root_schema(of: policies.Kind) -> Schema:
    """The `openAPIV3Schema` of one kind: apiVersion, kind, metadata, spec and status."""
    spec_schema = structural(of.spec.model_json_schema(by_alias=True))
    if not of.spec_required:
        spec_schema["default"] = {}
    status_schema = structural(of.status.model_json_schema(by_alias=True))
    root: Schema = {
        "type": "object",
        "description": spec_schema["description"],
        "properties": {
            "apiVersion": {"type": "string", "description": "Versioned schema of this object."},
            "kind": {"type": "string", "description": "REST resource this object represents."},
            # The API server owns metadata's schema and refuses anything more here.
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [DNS_LABEL_RULE],
    }
    if of.spec_required:
        root["required"] = ["spec"]
    return root


def printer_columns(of: policies.Kind) -> list[dict[str, Any]]:
    """`kubectl get` columns: Ready, Endpoint, Replicas, Hit ratio, the kind's own, Age (and
    Reason in -o wide)."""
    ready = '.status.conditions[?(@.type=="Ready")]'
    return [
        {"name": "Ready", "type": "string", "jsonPath": f"{ready}.status"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Hit ratio", "type": "number", "jsonPath": ".status.hitRatio"},
        *of.columns,
        {"name": "Reason", "type": "string", "jsonPath": f"{ready}.reason", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def definition(of: policies.Kind) -> dict[str, Any]:
    """One namespaced CustomResourceDefinition in group `sluice.dev`, version `v1alpha1`."""
    kind, plural, short_name = of.kind, of.plural, of.short_name
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{policies.GROUP}"},
        "spec": {
            "group": policies.GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["sluice"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": policies.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root_schema(of)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(of),
                }
            ],
        },
    }


def definitions() -> list[dict[str, Any]]:
    """Both CRDs, in a stable order."""
    return [definition(kind) for kind in policies.KINDS.values()]


def file_name(crd: dict[str, Any]) -> str:
    """kubebuilder's naming: `<group>_<plural>.yaml`."""
    names = crd["spec"]["names"]
    return f"{crd['spec']['group']}_{names['plural']}.yaml"


def render(crd: dict[str, Any]) -> str:
    """One CRD as the YAML text that is committed."""
    return HEADER + yaml.safe_dump(crd, sort_keys=True, width=100, allow_unicode=True)


def rendered() -> dict[str, str]:
    """File name -> YAML text, for every CRD."""
    return {file_name(crd): render(crd) for crd in definitions()}


def write(directory: pathlib.Path) -> list[pathlib.Path]:
    """Write every CRD into `directory` (created if needed); return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths
