"""Policy objects for the operator's unit tests, as the API server would hand them over."""

from __future__ import annotations

from typing import Any

from sluice.api import policies

NAMESPACE = "team-a"


def llm_body(name: str = "openai", generation: int = 1, **spec: Any) -> dict[str, Any]:
    """An LLMBatchPolicy object (the raw dict kopf passes to handlers)."""
    return {
        "apiVersion": policies.API_VERSION,
        "kind": "LLMBatchPolicy",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{name}",
            "generation": generation,
        },
        "spec": spec,
    }


def tool_body(name: str = "tools", generation: int = 1, **spec: Any) -> dict[str, Any]:
    """A ToolCachePolicy object; one server unless `servers` is given."""
    spec.setdefault("servers", [{"name": "time", "url": "http://time-mcp:8080/mcp"}])
    return {
        "apiVersion": policies.API_VERSION,
        "kind": "ToolCachePolicy",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{name}",
            "generation": generation,
        },
        "spec": spec,
    }


def llm(**spec: Any) -> policies.LLMBatchPolicy:
    return policies.LLMBatchPolicy.model_validate(llm_body(**spec))


def tools(**spec: Any) -> policies.ToolCachePolicy:
    return policies.ToolCachePolicy.model_validate(tool_body(**spec))
