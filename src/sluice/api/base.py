"""The base model every contract type shares: camelCase on the wire, docstrings as descriptions.

Field docstrings become the `description` of the CRD schema and of the config reference, so a
field documented here is documented everywhere (STYLE.md: the schema has one source).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
"""An RFC 1123 label, as Kubernetes names namespaces and as Sluice names MCP servers (without
anchors, so a pattern, a CEL rule or `re.fullmatch` can each use it)."""

DNS_SUBDOMAIN = rf"^{DNS_LABEL}(\.{DNS_LABEL})*$"
"""An RFC 1123 subdomain, as Kubernetes names Secrets. A referenced Secret's name goes into
the operator's API path (`/namespaces/<ns>/secrets/<name>`), so a name like `../../x` must
never get that far: it would read another namespace's objects with the operator's rights."""

HTTP_URL = r"^https?://[^\s/?#@]+([/?#]\S*)?$"
"""An absolute http(s) URL with a host and no whitespace: `https://` alone, a space or a
user-info part (`user@host`, which would put a credential in a ConfigMap) are refused."""


class Model(BaseModel):
    """A strict, immutable contract model: unknown keys are errors; camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )


class SecretKeyRef(Model):
    """A key in a Secret in the policy's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """Name of the Secret."""
    key: str
    """Key within the Secret whose value is used."""
