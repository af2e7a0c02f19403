"""The Redis client a config names, built in one place for whatever keeps data in Redis.

Three topologies, told apart by the URL and `cache.redis.cluster`:

    redis://[[user]:password@]host[:port][/db]     one node (`rediss://`: over TLS)
    the same with `cluster: true`                   any node of a Redis Cluster (database 0);
                                                    the client learns the others from it
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]
                     [?sentinel_password=...]       the primary that the Sentinels call `master`

Every client connects lazily, returns bytes, and fails fast: no retries inside redis-py, a
connect timeout of `timeoutMilliseconds`, and a socket timeout that is only a backstop, as the
callers bound each call themselves and own the fail-open (`rediscache`). A failover shows up as
errors until the client finds the new primary: the cluster client reloads the slot map after a
connection error, the Sentinel pool asks the Sentinels again for each new connection.

The cluster and Sentinel pools raise instead of waiting when all `poolSize` connections (the
cluster's: per node) are busy, as redis-py has no blocking pool for them: a caller bounds the
commands it has in flight to `poolSize` (`rediscache.RedisCache` does).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis.asyncio
import redis.asyncio.sentinel
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sluice.api import ConfigError, RedisConfig

Client = redis.asyncio.Redis | redis.asyncio.RedisCluster

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
SOCKET_TIMEOUT_SECONDS = 60.0
"""A backstop for a peer that stops answering mid-reply; the callers' own deadlines are shorter."""


def build(config: RedisConfig, environ: Mapping[str, str]) -> Client:
    """The client for the Redis that `config.urlEnv` names; ConfigError naming the field when
    the variable is unset or its URL unusable (the message never repeats the URL: it may hold a
    password)."""
    url = environ.get(config.url_env)
    if not url:
        raise ConfigError(f"cache.redis.urlEnv: environment variable {config.url_env} is unset")
    try:
        if url.startswith(f"{SENTINEL_SCHEME}://"):
            if config.cluster:
                raise ValueError("cluster: true needs a redis:// or rediss:// URL, not Sentinels")
            return _sentinel(config, url)
        if config.cluster:
            return _cluster(config, url)
        return _single(config, url)
    except (ValueError, redis.exceptions.RedisClusterException) as e:
        raise ConfigError(f"cache.redis.urlEnv: the URL in {config.url_env}: {e}") from None


def _options(config: RedisConfig) -> dict[str, Any]:
    return {
        "socket_connect_timeout": config.timeout_milliseconds / 1000,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
    }


def _single(config: RedisConfig, url: str) -> redis.asyncio.Redis:
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=config.pool_size,
        timeout=config.timeout_milliseconds / 1000,
        retry=Retry(NoBackoff(), 0),
        **_options(config),
    )
    return redis.asyncio.Redis(connection_pool=pool)


def _cluster(config: RedisConfig, url: str) -> redis.asyncio.RedisCluster:
    return redis.asyncio.RedisCluster.from_url(
        url, max_connections=config.pool_size, retry=Retry(NoBackoff(), 0), **_options(config)
    )


def _sentinel(config: RedisConfig, url: str) -> redis.asyncio.Redis:
    target = SentinelURL.parse(url)
    options = _options(config)
    # Sentinels answer in microseconds or not at all: the connect timeout bounds either.
    timeout = options["socket_connect_timeout"]
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "password": target.sentinel_password,
    }
    # redis-py leaves the Sentinel class unannotated; master_for makes a plain `Redis`.
    sentinels = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels, sentinel_kwargs=sentinel_options, **options
    )
    return cast(
        redis.asyncio.Redis,
        sentinels.master_for(
            target.master,
            max_connections=config.pool_size,
            retry=Retry(NoBackoff(), 0),
            db=target.db,
            username=target.username,
            password=target.password,
        ),
    )


async def ping(client: Client) -> None:
    """PING the primary, or every primary of a cluster (reading its slot map first)."""
    if isinstance(client, redis.asyncio.RedisCluster):
        await client.ping(target_nodes=redis.asyncio.RedisCluster.PRIMARIES)
    else:
        await client.ping()


async def mget(client: Client, keys: Sequence[str]) -> list[Any]:
    """`MGET` of keys in any slots: on a cluster one `MGET` per slot, sent to every primary
    concurrently (see `rediscache` for why no hash tags)."""
    if isinstance(client, redis.asyncio.RedisCluster):
        return await client.mget_nonatomic(keys)
    return await client.mget(keys)


async def close(client: Client) -> None:
    """Close the client, its pools, and a Sentinel client's connections to the Sentinels."""
    await client.aclose()
    if isinstance(client, redis.asyncio.RedisCluster):
        return
    pool = client.connection_pool
    await pool.disconnect()
    if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        await pool.sentinel_manager.aclose()


def describe(client: Client) -> str:
    """The topology in a few words, for `__repr__`s and logs (no password)."""
    if isinstance(client, redis.asyncio.RedisCluster):
        return f"cluster nodes={len(client.get_nodes())}"
    pool = client.connection_pool
    if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        return f"sentinel master={pool.service_name!r}"
    kwargs = pool.connection_kwargs
    return f"node {kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"


@dataclasses.dataclass(frozen=True, slots=True, repr=False)  # its own repr: no passwords
class SentinelURL:
    """A `redis+sentinel://` URL taken apart (pure; `parse` raises ValueError saying what is
    wrong, without the URL)."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != SENTINEL_SCHEME:
            raise ValueError(f"the scheme must be {SENTINEL_SCHEME}://")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        username, password = _credentials(userinfo)
        sentinels = [_address(host) for host in hosts.split(",")]
        path = [urllib.parse.unquote(p) for p in parts.path.split("/")[1:]]
        if not path or not path[0] or len(path) > 2:
            raise ValueError("the path must be /<master name> or /<master name>/<db>")
        db = path[1] if len(path) == 2 else "0"
        if not db.isdigit():
            raise ValueError("the database must be a number")
        query = urllib.parse.parse_qs(parts.query, strict_parsing=bool(parts.query))
        unknown = set(query) - {"sentinel_password"}
        if unknown:
            raise ValueError(f"unknown query parameters: {', '.join(sorted(unknown))}")
        sentinel_password = query.get("sentinel_password", [None])[-1]
        return cls(sentinels, path[0], int(db), username, password, sentinel_password)

    def __repr__(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"<SentinelURL {hosts} master={self.master!r} db={self.db}>"


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    username, colon, password = userinfo.partition(":")
    unquoted = urllib.parse.unquote
    return (unquoted(username) or None), (unquoted(password) if colon else None)


def _address(host: str) -> tuple[str, int]:
    """`host[:port]` or `[v6]:port` of one Sentinel."""
    if not host:
        raise ValueError("a Sentinel address is empty")
    # urlsplit knows the bracketed IPv6 form; `.port` raises ValueError on a bad one.
    parts = urllib.parse.urlsplit(f"//{host}")
    if not parts.hostname or parts.username is not None:
        raise ValueError("a Sentinel address must be host[:port]")
    return parts.hostname, parts.port or SENTINEL_PORT
