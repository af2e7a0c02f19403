"""Settings for an OpenAI-compatible upstream: the parts shared by the CRD and the proxy config.

`LLMBatchPolicy.spec` and the proxy config's `llm` section differ only in how secrets are named
(a Secret reference in the CRD, an environment variable in the config), so everything else is
defined once here and both sides subclass it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from sluice.api.base import HTTP_URL, Model
from sluice.api.store import StoreSettings


class RetrySettings(Model):
    """Retries of failed upstream calls: connect errors, 429 and 503 always, 502/504 for calls
    that cannot bill twice (not POST) unless `onStatus` says so; never mid-stream."""

    max_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts in all, the first included; 1 disables retries."""
    backoff_seconds: float = Field(default=0.2, gt=0, le=30)
    """First backoff; doubled on each further attempt, with full jitter."""
    max_backoff_seconds: float = Field(default=5.0, gt=0, le=300)
    """Upper bound of one backoff, and of a `Retry-After` the proxy is willing to honour."""
    budget_seconds: float = Field(default=30.0, gt=0, le=600)
    """Total time a request may spend in retries before the last error is returned."""
    on_status: list[Literal[502, 504]] = Field(default_factory=list, max_length=2)
    """Statuses on which POST calls are retried too. A 502 or 504 may come after the upstream
    did the work (and billed it), so a POST is not retried on them unless named here."""


class HealthSettings(Model):
    """Passive health of upstream endpoints: failing endpoints are rested, not hammered."""

    failure_threshold: int = Field(default=3, ge=1, le=100)
    """Consecutive failures (connect errors, 5xx, timeouts) after which an endpoint is rested."""
    cooldown_seconds: float = Field(default=10.0, gt=0, le=3600)
    """How long a rested endpoint receives no traffic before it is tried again."""


class UpstreamSettings(Model):
    """Where the OpenAI-compatible API is and how long to wait for it."""

    url: str = Field(default="https://api.openai.com/v1", pattern=HTTP_URL, max_length=2048)
    """Base URL of the API, including its version prefix (for example `/v1`)."""
    endpoints: list[Annotated[str, Field(pattern=HTTP_URL, max_length=2048)]] = Field(
        default_factory=list, max_length=32
    )
    """Several equivalent base URLs, used round-robin with passive health; replaces `url`."""
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Time allowed for the upstream's whole answer (between streamed chunks, when streaming)."""
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    """Time allowed to open a connection to the upstream."""
    retry: RetrySettings = Field(default_factory=RetrySettings)
    """How failed calls are retried."""
    health: HealthSettings = Field(default_factory=HealthSettings)
    """How failing endpoints are rested."""

    @property
    def base_urls(self) -> list[str]:
        """The endpoints to use, without trailing slashes."""
        return [u.rstrip("/") for u in (self.endpoints or [self.url])]


class PoolSettings(Model):
    """Upstream connection pooling: explicit limits, so saturation is visible and bounded."""

    clients: int = Field(default=2, ge=1, le=64)
    """Upstream client sessions, used round-robin; each has its own connection pool."""
    max_connections: int = Field(default=100, ge=1, le=10000)
    """Connections open at once across all client sessions; further requests wait for one."""
    max_keepalive_connections: int = Field(default=20, ge=0, le=10000)
    """Idle connections kept open across all client sessions (at most `maxConnections`); more
    are closed when released."""
    keepalive_expiry_seconds: float = Field(default=30.0, ge=0, le=3600)
    """Idle time after which a kept-alive connection is closed."""


class BatchedEndpoints(Model):
    """Which endpoints are batched; an endpoint turned off is plain pass-through."""

    embeddings: bool = True
    """Coalesce concurrent `/v1/embeddings` requests into one upstream call."""
    completions: bool = True
    """Coalesce concurrent non-streaming `/v1/completions` requests into one prompt-array call."""
    chat: bool = True
    """Dispatch `/v1/chat/completions` in windows and share identical in-flight requests."""


class BatchingSettings(Model):
    """How requests are gathered into upstream calls."""

    enabled: bool = True
    """Master switch; when false every endpoint is plain pass-through."""
    endpoints: BatchedEndpoints = Field(default_factory=BatchedEndpoints)
    """Per-endpoint switches."""
    max_batch_size: int = Field(default=32, ge=1, le=2048)
    """Requests (or embedding inputs) per batch; a full batch is sent at once."""
    max_wait_milliseconds: int = Field(default=10, ge=0, le=10000)
    """How long the oldest pending request waits for batch-mates before a partial batch goes."""
    max_concurrent_batches: int = Field(default=8, ge=1, le=1024)
    """Batches (upstream calls) in flight at once per endpoint."""
    max_queue: int = Field(default=10000, ge=1, le=1000000)
    """Pending requests beyond which callers get 429 with `Retry-After`, never unbounded memory."""
    max_inputs_per_call: int = Field(default=2048, ge=1, le=2048)
    """Embedding inputs per upstream call (OpenAI's limit is 2048)."""
    max_tokens_per_call: int = Field(default=300000, ge=1, le=10000000)
    """Estimated tokens per coalesced embeddings call (OpenAI's limit is 300,000)."""
    share_chat: Literal["deterministic", "always", "off"] = "deterministic"
    """When identical in-flight chat requests share one upstream call: only deterministic ones
    (temperature 0 or a seed), always, or never."""


class CacheTtls(Model):
    """Time to live of cached entries, per kind of data."""

    chat: int = Field(default=300, ge=0, le=31536000)
    """Seconds a chat completion stays cached; 0 disables caching of chat."""
    completions: int = Field(default=300, ge=0, le=31536000)
    """Seconds a legacy completion stays cached; 0 disables it."""
    embeddings: int = Field(default=86400, ge=0, le=31536000)
    """Seconds an embedding vector stays cached; 0 disables it."""


class CacheSettings(StoreSettings):
    """Where and how responses are cached."""

    mode: Literal["deterministic", "always", "off"] = "deterministic"
    """Which requests are cached: deterministic ones (temperature 0 or a seed, n = 1), all, none."""
    ttl_seconds: CacheTtls = Field(default_factory=CacheTtls)
    """Time to live per kind of data."""
    tenant_header: str | None = Field(default=None, max_length=128)
    """A request header naming the tenant; when unset the tenant is a hash of the credentials."""
    share_across_tenants: bool = False
    """Let every tenant read every other tenant's entries. Only for public, non-personal data."""


class ModelPrice(Model):
    """What the upstream charges for one model at its synchronous (full) price."""

    input_per_million: float = Field(ge=0, le=1000000)
    """Dollars per million prompt (input) tokens."""
    output_per_million: float = Field(default=0, ge=0, le=1000000)
    """Dollars per million completion (output) tokens."""


class DeferredSettings(Model):
    """Deferred mode: ordinary requests sent as provider Batch API jobs (half the price, answers
    within the deadline), opted into per request (`x-sluice-deferred`) or for the whole route."""

    enabled: bool = False
    """Defer every eligible request (non-streaming chat, completions, embeddings) that does not
    say `x-sluice-deferred: false`; when false only requests with the header are deferred."""
    default_deadline_seconds: float = Field(default=86400, ge=1, le=86400)
    """Deadline of a request that opts in without naming one (`x-sluice-deferred: true`)."""
    max_items_per_batch: int = Field(default=1000, ge=1, le=50000)
    """Items per Batch API job; a group with this many waiting items is submitted at once."""
    flush_after_seconds: float = Field(default=60, ge=0.01, le=86400)
    """Longest time the oldest waiting item of a group waits before a partial job is submitted."""
    poll_interval_seconds: float = Field(default=30, ge=0.01, le=3600)
    """First wait between polls of a submitted job; doubled after each poll, up to the maximum."""
    max_poll_interval_seconds: float = Field(default=300, ge=0.01, le=3600)
    """Upper bound of the wait between polls."""
    assumed_batch_latency_seconds: float = Field(default=3600, ge=0, le=86400)
    """Expected time from submitting a job to its results, until jobs have shown it: an item
    whose deadline is nearer than this is sent synchronously at once."""
    fallback_margin_seconds: float = Field(default=60, ge=0, le=86400)
    """Time kept in hand before a deadline, beyond the learnt synchronous latency: an item still
    unanswered this close to its deadline is sent synchronously (at full price)."""
    on_incomplete: Literal["resend", "fail"] = "resend"
    """Items an expired, cancelled or failed job left unanswered: queued again for the next job
    (the deadline fallback still applies), or answered with an error."""
    result_ttl_seconds: int = Field(default=86400, ge=60, le=604800)
    """How long a finished job's answer is kept for `GET /v1/sluice/jobs/{id}`."""
    savings_ratio: float = Field(default=0.5, ge=0, le=1)
    """Share of the synchronous price a batched item saves (OpenAI's Batch API: 50%)."""
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    """Synchronous prices by model name, for the estimated-savings metric; models not named
    count their tokens only."""
    store: Literal["auto", "memory", "redis"] = "auto"
    """Where pending items, job ids and results live: `redis` (the cache's Redis; survives
    restarts and is shared by replicas), `memory` (one replica only), or `auto` (Redis when the
    cache uses it)."""


def deferred_store(deferred: DeferredSettings, cache: CacheSettings) -> Literal["memory", "redis"]:
    """Where deferred state lives for these settings: the one rule the proxy and the operator's
    status both follow (`auto` is Redis when the cache uses Redis)."""
    if deferred.store != "auto":
        return deferred.store
    return "memory" if cache.backend == "memory" or cache.mode == "off" else "redis"


class LLMSettings(Model):
    """Everything about one upstream except the parts that name secrets (upstream, cache)."""

    vary_headers: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")]] = (
        Field(default_factory=list, max_length=32)
    )
    """Request headers that change the upstream's answer or who it bills, besides the built-in
    ones (`OpenAI-Beta`, `OpenAI-Organization`, `OpenAI-Project`, `anthropic-version`,
    `anthropic-beta`): requests that differ in one never share a cache entry, an upstream call
    in flight or a merged call."""
    follower_wait_seconds: float = Field(default=60.0, gt=0, le=3600)
    """How long a request waits on an identical request's upstream call in flight before it
    makes its own."""
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    """Request batching."""
    deferred: DeferredSettings = Field(default_factory=DeferredSettings)
    """Deferred mode (provider Batch API jobs)."""
    pool: PoolSettings = Field(default_factory=PoolSettings)
    """Upstream connection pooling."""
