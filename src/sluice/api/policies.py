"""The two custom resources, `LLMBatchPolicy` and `ToolCachePolicy`: spec and status models.

A spec is the proxy config's section (`sluice.api.config`) with secrets named as Secret
references instead of environment variables, plus how the operator runs the proxy (`proxy`)
and exposes its metrics (`metrics`). `sluice.api.crds` turns these models into the CRD YAML;
`sluice.operator` validates every policy it sees with them and renders the proxy config.

Cross-field rules live twice, on purpose: as CEL (`x-kubernetes-validations`, enforced by the
API server) and as pydantic validators (enforced wherever a spec is parsed). Both are written
next to each other here, so a rule is never changed in one place only.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator
from pydantic.alias_generators import to_camel

from sluice.api import quantities
from sluice.api.base import DNS_SUBDOMAIN, Model, SecretKeyRef
from sluice.api.llm import CacheSettings, LLMSettings, PoolSettings, UpstreamSettings
from sluice.api.mcp import MCPServerSettings, MCPSettings, ToolCacheSettings, check_unique_servers
from sluice.api.store import RedisSettings, StoreSettings

GROUP = "sluice.dev"
VERSION = "v1alpha1"
API_VERSION: Literal["sluice.dev/v1alpha1"] = "sluice.dev/v1alpha1"

DURATION = r"^([0-9]+(ms|s|m|h))+$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

Quantity = (
    Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=quantities.PATTERN, max_length=64)]
)


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; `fieldPath` makes the error name the field."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """The `json_schema_extra` that carries CEL rules into the generated schema."""
    return {"x-kubernetes-validations": list(rules)}


# --- Secret-bearing settings ------------------------------------------------------------

# Every rule starts with `has()` guards: the API server checks rules against the schema's own
# `default: {}` objects too, before their fields are defaulted.

DEFAULT_URL = UpstreamSettings.model_fields["url"].default
# `url` has a default, so the API server fills it in before CEL runs: "both set" can only mean
# that `url` differs from its default. The literal comes from the model, never retyped.
URL_OR_ENDPOINTS = cel(
    "!has(self.endpoints) || size(self.endpoints) == 0 || !has(self.url)"
    f" || self.url == {json.dumps(DEFAULT_URL)}",
    "set either url or endpoints, not both: endpoints replaces url",
    ".endpoints",
)


class UpstreamSpec(UpstreamSettings):
    """Where the OpenAI-compatible API is, how long to wait for it, and its API key."""

    model_config = ConfigDict(json_schema_extra=validations(URL_OR_ENDPOINTS))

    api_key_secret_ref: SecretKeyRef | None = None
    """Secret key holding the upstream API key, injected by the proxy; when unset, callers'
    `Authorization` headers are forwarded."""

    @model_validator(mode="after")
    def _url_or_endpoints(self) -> UpstreamSpec:
        if self.endpoints and self.url != DEFAULT_URL:
            raise ValueError(URL_OR_ENDPOINTS["message"])
        return self


class RedisSpec(RedisSettings):
    """How the proxy talks to Redis, and the Secret key holding its URL."""

    url_secret_ref: SecretKeyRef | None = None
    """Secret key holding the Redis URL (`redis://…`, `rediss://…` or
    `redis+sentinel://[:password@]host:port[,host:port…]/master[/db]`); required by the `redis`
    and `tiered` backends."""


REDIS_NEEDS_URL = cel(
    "!has(self.backend) || self.backend == 'memory'"
    " || (has(self.redis) && has(self.redis.urlSecretRef))",
    "the redis and tiered backends need redis.urlSecretRef",
    ".redis.urlSecretRef",
)


class RedisBackedSpec(StoreSettings):
    """A store's settings with the Secret of its Redis URL, for either kind's `cache`."""

    model_config = ConfigDict(json_schema_extra=validations(REDIS_NEEDS_URL))

    redis: RedisSpec = Field(default_factory=RedisSpec)
    """Redis connection, for the `redis` and `tiered` backends."""

    @model_validator(mode="after")
    def _redis_needs_url(self) -> RedisBackedSpec:
        if self.backend != "memory" and self.redis.url_secret_ref is None:
            raise ValueError(REDIS_NEEDS_URL["message"])
        return self


class CacheSpec(CacheSettings, RedisBackedSpec):
    """Where and how responses are cached."""


KEEPALIVE_WITHIN_MAX = cel(
    "!has(self.maxKeepaliveConnections) || !has(self.maxConnections)"
    " || self.maxKeepaliveConnections <= self.maxConnections",
    "maxKeepaliveConnections must not exceed maxConnections",
    ".maxKeepaliveConnections",
)


def check_pool(pool: PoolSettings) -> None:
    """The pydantic twin of `KEEPALIVE_WITHIN_MAX` (PoolSettings is shared, so checked here)."""
    if pool.max_keepalive_connections > pool.max_connections:
        raise ValueError(KEEPALIVE_WITHIN_MAX["message"])


# --- How the proxy runs -------------------------------------------------------------------


KNOWN_MESSAGE = "resource names are cpu, memory, ephemeral-storage or hugepages-<size>"


def known_resources(field: str) -> dict[str, str]:
    """The CEL rule that every key of `requests` or `limits` is a resource a Pod accepts."""
    names = json.dumps(list(quantities.RESOURCE_NAMES))
    rule = f"self.{field}.all(k, k in {names} || k.startsWith('{quantities.HUGEPAGES_PREFIX}'))"
    return cel(f"!has(self.{field}) || {rule}", KNOWN_MESSAGE, f".{field}")


REQUESTS_WITHIN_LIMITS = cel(
    # string(): a quantity is int-or-string, and quantity() takes only strings.
    "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits)"
    " || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
    "no request may exceed its limit (a Pod with requests above limits is refused)",
    ".requests",
)


class ResourceRequirements(Model):
    """CPU and memory for each proxy container, as in a Pod spec."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            known_resources("requests"), known_resources("limits"), REQUESTS_WITHIN_LIMITS
        )
    )

    requests: dict[str, Quantity] = Field(default={"cpu": "100m", "memory": "256Mi"}, max_length=8)
    """Resources the scheduler reserves, for example `cpu: 250m`."""
    limits: dict[str, Quantity] = Field(default={"memory": "1Gi"}, max_length=8)
    """Upper bounds. Keep memory above `cache.maxBytes`; a CPU limit throttles latency."""

    @model_validator(mode="after")
    def _pod_would_accept(self) -> ResourceRequirements:
        if not all(quantities.known(name) for name in (*self.requests, *self.limits)):
            raise ValueError(KNOWN_MESSAGE)
        for name, request in self.requests.items():
            if name in self.limits and quantities.value(request) > quantities.value(
                self.limits[name]
            ):
                raise ValueError(REQUESTS_WITHIN_LIMITS["message"])
        return self


MIN_WITHIN_MAX = cel(
    "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
    "minReplicas must not exceed maxReplicas",
    ".minReplicas",
)


class AutoscalingSpec(Model):
    """A HorizontalPodAutoscaler for the proxy Deployment, scaling on CPU."""

    model_config = ConfigDict(json_schema_extra=validations(MIN_WITHIN_MAX))

    min_replicas: int = Field(default=2, ge=1, le=100)
    """Fewest proxy pods; with more than one, a PodDisruptionBudget keeps all but one up."""
    max_replicas: int = Field(default=10, ge=1, le=100)
    """Most proxy pods."""
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)
    """Average CPU use, in percent of the pods' CPU request, the autoscaler aims for."""

    @model_validator(mode="after")
    def _min_within_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MIN_WITHIN_MAX["message"])
        return self


AUTOSCALING_NEEDS_CPU_REQUEST = cel(
    "!has(self.autoscaling) || (has(self.resources) && has(self.resources.requests)"
    " && 'cpu' in self.resources.requests)",
    "autoscaling on CPU needs resources.requests.cpu",
    ".autoscaling",
)


class ProxySpec(Model):
    """How the proxy Deployment runs."""

    model_config = ConfigDict(json_schema_extra=validations(AUTOSCALING_NEEDS_CPU_REQUEST))

    replicas: int = Field(default=2, ge=0, le=100)
    """Proxy pods, unless `autoscaling` is set; with more than one, a PodDisruptionBudget keeps
    all but one up."""
    autoscaling: AutoscalingSpec | None = None
    """Scale the proxy pods on CPU between two bounds instead of running `replicas`; the
    operator then owns a HorizontalPodAutoscaler and leaves the Deployment's replicas to it."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """CPU and memory of each proxy container."""
    image: str | None = Field(default=None, min_length=1, max_length=512)
    """Proxy image; defaults to the operator's own image, which carries both entry points."""
    shutdown_grace_seconds: int = Field(default=25, ge=0, le=3600)
    """On shutdown, how long in-flight requests may take; the pod's grace period follows it."""

    @model_validator(mode="after")
    def _autoscaling_needs_cpu_request(self) -> ProxySpec:
        if self.autoscaling is not None and "cpu" not in self.resources.requests:
            raise ValueError(AUTOSCALING_NEEDS_CPU_REQUEST["message"])
        return self

    @property
    def fewest_replicas(self) -> int:
        """The pods there are at the least: what the PodDisruptionBudget is judged by."""
        return self.replicas if self.autoscaling is None else self.autoscaling.min_replicas


class AdminSpec(Model):
    """The proxy's admin API (cache invalidation, on a port the Service never exposes)."""

    token_secret_ref: SecretKeyRef | None = None
    """Secret key holding the bearer token the admin API requires; when unset, the operator
    makes a Secret `<policy>-<llm|mcp>-admin` with a random token (key `token`) and owns it."""


class MetricsSpec(Model):
    """How Prometheus finds the proxy's `/metrics`."""

    service_monitor: bool = False
    """Create a ServiceMonitor, where the Prometheus Operator's CRD is installed."""
    interval: str = Field(default="30s", pattern=DURATION, max_length=32)
    """Scrape interval of the ServiceMonitor, as a Prometheus duration."""


# --- Specs --------------------------------------------------------------------------------


DEFERRED_NEEDS_URL = cel(
    "!has(self.deferred) || !has(self.deferred.store) || self.deferred.store != 'redis'"
    " || (has(self.cache) && has(self.cache.redis) && has(self.cache.redis.urlSecretRef))",
    "deferred.store redis needs cache.redis.urlSecretRef",
    ".cache.redis.urlSecretRef",
)


class LLMBatchPolicySpec(LLMSettings):
    """One OpenAI-compatible upstream and how to treat it: batching, caching, pooling."""

    model_config = ConfigDict(json_schema_extra=validations(DEFERRED_NEEDS_URL))

    # Redeclared only to carry the CEL rule: PoolSettings is shared with the proxy config.
    pool: PoolSettings = Field(
        default_factory=PoolSettings, json_schema_extra=validations(KEEPALIVE_WITHIN_MAX)
    )
    """Upstream connection pooling."""
    upstream: UpstreamSpec = Field(default_factory=UpstreamSpec)
    """The upstream API."""
    cache: CacheSpec = Field(default_factory=CacheSpec)
    """Response caching."""
    proxy: ProxySpec = Field(default_factory=ProxySpec)
    """How the proxy runs."""
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    """How the proxy's metrics are scraped."""
    admin: AdminSpec = Field(default_factory=AdminSpec)
    """The proxy's admin API."""

    @model_validator(mode="after")
    def _pool_limits(self) -> LLMBatchPolicySpec:
        check_pool(self.pool)
        return self

    @model_validator(mode="after")
    def _deferred_redis_needs_url(self) -> LLMBatchPolicySpec:
        if self.deferred.store == "redis" and self.cache.redis.url_secret_ref is None:
            raise ValueError(DEFERRED_NEEDS_URL["message"])
        return self


class SecretRef(Model):
    """A whole Secret in the policy's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """Name of the Secret."""


class MCPServerSpec(MCPServerSettings):
    """One upstream MCP server, with its secret headers taken from a Secret."""

    headers_secret_ref: SecretRef | None = None
    """Secret whose keys and values become headers sent to this server (for example
    `Authorization`); each key must be a valid environment variable name, and an underscore in
    it is sent as a dash (`X_Api_Key` becomes `X-Api-Key`)."""


class ToolCacheSpec(ToolCacheSettings, RedisBackedSpec):
    """Where tool lists and results are cached."""


class ToolCachePolicySpec(MCPSettings):
    """A set of MCP servers behind one aggregating, caching endpoint."""

    servers: list[MCPServerSpec] = Field(
        min_length=1,
        max_length=64,
        # A list-map: the API server itself rejects two servers with one name.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """The servers aggregated at `/mcp`; names are unique."""
    cache: ToolCacheSpec = Field(default_factory=ToolCacheSpec)
    """Where tool lists and results are cached."""
    proxy: ProxySpec = Field(default_factory=ProxySpec)
    """How the proxy runs."""
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    """How the proxy's metrics are scraped."""
    admin: AdminSpec = Field(default_factory=AdminSpec)
    """The proxy's admin API."""

    @model_validator(mode="after")
    def _unique_names(self) -> ToolCachePolicySpec:
        check_unique_servers(self.servers)
        return self


# --- Status -------------------------------------------------------------------------------

# Kubernetes writes times as RFC 3339 in UTC with a `Z`, to the second.
Time = Annotated[
    datetime.datetime,
    PlainSerializer(lambda t: t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
]


class Condition(Model):
    """One aspect of the policy's state (KEP-1623: the fields of `metav1.Condition`)."""

    type: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$", max_length=316)
    """`Ready`, `Progressing` or `Degraded`."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = Field(pattern=CONDITION_REASON, min_length=1, max_length=1024)
    """Why, as one CamelCase word, for machines."""
    message: str = Field(default="", max_length=32768)
    """Why, in a sentence, for people."""
    last_transition_time: Time
    """When `status` last changed."""
    observed_generation: int = Field(default=0, ge=0)
    """The policy's `metadata.generation` this condition describes."""


class PolicyStatus(Model):
    """What the operator made of the policy, taken from the proxy Deployment."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The `metadata.generation` last reconciled."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """`Ready`, `Progressing` and `Degraded`."""
    endpoint: str | None = None
    """The URL clients use: the proxy Service's, for example `http://x-llm.ns.svc:8080/v1`."""
    ready_replicas: int | None = Field(default=None, ge=0)
    """Proxy pods ready to serve."""
    hit_ratio: float | None = Field(default=None, ge=0, le=1)
    """Share of cache look-ups answered from the cache, across the ready proxy pods since they
    started; unset until the proxies have served a look-up."""


class LLMBatchPolicyStatus(PolicyStatus):
    """What the operator made of the policy, what its proxies' metrics say it saved, and where its
    deferred jobs live."""

    calls_saved_per_hour: int | None = Field(default=None, ge=0)
    """Upstream calls the proxies saved (batched, cached, shared) per hour, each ready pod's
    since it started, summed; unset until the pods have been read."""
    deferred_store: Literal["redis", "memory"] | None = None
    """Where deferred mode keeps pending items, job ids and results: `redis` (shared by the
    replicas, kept across restarts) or `memory` (works on one replica only: a job is known only
    to the pod that took it, and lost when that pod restarts)."""


class ToolCachePolicyStatus(PolicyStatus):
    """What the operator made of the policy, and what its proxies' metrics say of its servers."""

    servers: str | None = Field(default=None, pattern=r"^[0-9]+/[0-9]+$", max_length=16)
    """Servers up over servers named, as `ready/total` (for example `2/3`). A server counts as
    up when every ready proxy pod that has contacted it finds it answering (a caller may land on
    any pod); one that no pod has contacted yet does not count. Unset until the proxies' own
    metrics have been read."""
    tools: int | None = Field(default=None, ge=0)
    """Tools the endpoint lists: for each server named, the most tools any ready proxy pod holds
    in its last good list of that server (pods refresh their lists at different times; a server
    that is down still has its last list served), summed over the servers."""


# --- The resources as the operator reads them -----------------------------------------------


class ObjectMeta(BaseModel):
    """The parts of `metadata` the operator uses; the API server's other fields are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    name: str
    namespace: str
    uid: str
    generation: int = 0


class Resource(BaseModel):
    """A policy object as the API server stores it; `status` and the rest are ignored here."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    api_version: Literal["sluice.dev/v1alpha1"] = API_VERSION
    metadata: ObjectMeta


class LLMBatchPolicy(Resource):
    """An `LLMBatchPolicy` object."""

    kind: Literal["LLMBatchPolicy"] = "LLMBatchPolicy"
    spec: LLMBatchPolicySpec = Field(default_factory=LLMBatchPolicySpec)


class ToolCachePolicy(Resource):
    """A `ToolCachePolicy` object."""

    kind: Literal["ToolCachePolicy"] = "ToolCachePolicy"
    spec: ToolCachePolicySpec


Policy = LLMBatchPolicy | ToolCachePolicy


@dataclasses.dataclass(frozen=True)
class Kind:
    """What the CRD generator and the operator need to know of one kind of policy."""

    kind: str
    plural: str
    short_name: str
    suffix: str
    """Of its objects' names (`<policy>-<suffix>`), so two kinds of one name never collide."""
    endpoint_path: str
    """Where the proxy serves it, after the Service's URL."""
    model: type[LLMBatchPolicy] | type[ToolCachePolicy]
    spec: type[Model]
    spec_required: bool
    status: type[PolicyStatus]
    caches: frozenset[str]
    """The `cache` labels of the proxy's `sluice_cache_requests_total` its hit ratio counts."""
    columns: tuple[dict[str, str], ...] = ()
    """`kubectl get` columns of its own, shown after the hit ratio."""

    def child_name(self, policy_name: str) -> str:
        """The name shared by every object of a policy: `<policy>-llm` or `<policy>-mcp`.

        A suffix per kind, so an LLMBatchPolicy and a ToolCachePolicy of one name never fight
        over one Deployment. The CRD limits policy names to 59 characters for it.
        """
        return f"{policy_name}-{self.suffix}"


KINDS: dict[str, Kind] = {
    kind.kind: kind
    for kind in (
        Kind(
            kind="LLMBatchPolicy",
            plural="llmbatchpolicies",
            short_name="lbp",
            suffix="llm",
            endpoint_path="/v1",
            model=LLMBatchPolicy,
            spec=LLMBatchPolicySpec,
            spec_required=False,
            status=LLMBatchPolicyStatus,
            caches=frozenset({"chat", "completions", "embeddings"}),
            columns=({"name": "Deferred", "type": "string", "jsonPath": ".status.deferredStore"},),
        ),
        Kind(
            kind="ToolCachePolicy",
            plural="toolcachepolicies",
            short_name="tcp",
            suffix="mcp",
            endpoint_path="/mcp",
            model=ToolCachePolicy,
            spec=ToolCachePolicySpec,
            spec_required=True,
            status=ToolCachePolicyStatus,
            caches=frozenset({"tools_list", "tool_results"}),
            columns=(
                {"name": "Servers", "type": "string", "jsonPath": ".status.servers"},
                {"name": "Tools", "type": "integer", "jsonPath": ".status.tools"},
            ),
        ),
    )
}
"""Every kind of policy, by `kind`."""
