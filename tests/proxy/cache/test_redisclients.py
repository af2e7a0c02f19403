"""The Redis client a config names, without a network: URL forms, topologies, clean errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
import redis.asyncio.sentinel

from sluice.api import ConfigError, RedisConfig
from sluice.proxy.cache import rediscache, redisclients


def config(**fields: Any) -> RedisConfig:
    return RedisConfig.model_validate(fields)


@pytest.mark.parametrize(
    ("url", "sentinels", "master", "db", "username", "password", "sentinel_password"),
    [
        pytest.param(
            "redis+sentinel://s1:26380,s2,s3:26381/mymaster",
            [("s1", 26380), ("s2", 26379), ("s3", 26381)],
            "mymaster",
            0,
            None,
            None,
            None,
            id="several-sentinels-default-port",
        ),
        pytest.param(
            "redis+sentinel://:p%40ss@10.0.0.1/cache/3",
            [("10.0.0.1", 26379)],
            "cache",
            3,
            None,
            "p@ss",
            None,
            id="password-and-db",
        ),
        pytest.param(
            "redis+sentinel://app:pw@[::1]:5000/m?sentinel_password=s%26cret",
            [("::1", 5000)],
            "m",
            0,
            "app",
            "pw",
            "s&cret",
            id="ipv6-user-sentinel-password",
        ),
    ],
)
def test_a_sentinel_url_names_the_sentinels_the_master_and_the_credentials(
    url: str,
    sentinels: list[tuple[str, int]],
    master: str,
    db: int,
    username: str | None,
    password: str | None,
    sentinel_password: str | None,
) -> None:
    parsed = redisclients.SentinelURL.parse(url)
    assert parsed.sentinels == sentinels
    assert (parsed.master, parsed.db) == (master, db)
    assert (parsed.username, parsed.password) == (username, password)
    assert parsed.sentinel_password == sentinel_password
    assert password is None or password not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        pytest.param("redis+sentinel://:hunter2@s1:26379", "master name", id="no-master"),
        pytest.param("redis+sentinel://:hunter2@s1/", "master name", id="empty-master"),
        pytest.param("redis+sentinel://:hunter2@s1/m/x", "database", id="db-not-a-number"),
        pytest.param("redis+sentinel://:hunter2@s1/m/0/extra", "master name", id="long-path"),
        pytest.param("redis+sentinel://:hunter2@s1,/m", "empty", id="empty-sentinel"),
        pytest.param("redis+sentinel://:hunter2@s1:port/m", "Port", id="bad-port"),
        pytest.param("redis+sentinel://:hunter2@s1:99999/m", "Port", id="port-out-of-range"),
        pytest.param("redis+sentinel://:hunter2@s1/m?tls=1", "unknown query", id="unknown-query"),
        pytest.param("redis+sentinel://:hunter2@s1/m?x", "bad query", id="malformed-query"),
    ],
)
def test_a_bad_sentinel_url_is_a_config_error_that_never_shows_the_password(
    url: str, complaint: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        redisclients.build(config(), {"REDIS_URL": url})
    message = str(caught.value)
    assert message.startswith("cache.redis.urlEnv: the URL in REDIS_URL:")
    assert complaint in message
    assert "hunter2" not in message


def test_each_url_form_gets_its_own_client_and_none_connects_yet() -> None:
    single = redisclients.build(config(), {"REDIS_URL": "redis://127.0.0.1:1/2"})
    assert isinstance(single, redis.asyncio.Redis)
    assert isinstance(single.connection_pool, redis.asyncio.BlockingConnectionPool)
    assert redisclients.describe(single) == "node 127.0.0.1:1/2"

    cluster = redisclients.build(config(cluster=True), {"REDIS_URL": "redis://127.0.0.1:1"})
    assert isinstance(cluster, redis.asyncio.RedisCluster)

    url = "redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/cache/1"
    sentinel = redisclients.build(config(poolSize=7), {"REDIS_URL": url})
    assert isinstance(sentinel, redis.asyncio.Redis)
    pool = sentinel.connection_pool
    assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
    assert pool.max_connections == 7
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (1, "pw")
    assert redisclients.describe(sentinel) == "sentinel master='cache'"


@pytest.mark.parametrize(
    ("settings", "url", "complaint"),
    [
        pytest.param(
            {"cluster": True}, "redis+sentinel://s/m", "not Sentinels", id="cluster-and-sentinel"
        ),
        pytest.param({"cluster": True}, "redis://h:1/3", "db", id="cluster-db-not-0"),
        pytest.param({}, "http://h:1", "redis://", id="not-a-redis-url"),
    ],
)
def test_a_url_that_does_not_fit_the_settings_is_a_config_error(
    settings: dict[str, Any], url: str, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        redisclients.build(config(**settings), {"REDIS_URL": url})


def test_an_unset_url_variable_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="environment variable CACHE_URL is unset"):
        redisclients.build(config(urlEnv="CACHE_URL"), {})


def test_the_cache_names_its_topology() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1"}
    assert "cluster" in repr(rediscache.RedisCache.from_config(config(cluster=True), env))


async def test_the_cache_keeps_at_most_its_pool_size_of_commands_in_flight() -> None:
    """The cluster and Sentinel pools raise when full instead of waiting: the cache waits."""

    class Counting:
        def __init__(self) -> None:
            self.now = self.most = 0

        async def get(self, key: str) -> bytes:
            self.now += 1
            self.most = max(self.most, self.now)
            for _ in range(3):
                await asyncio.sleep(0)
            self.now -= 1
            return b"v"

    client = Counting()
    cache = rediscache.RedisCache(client, "p:", 5.0, in_flight=3)  # type: ignore[arg-type]
    answers = await asyncio.gather(*(cache.get(f"p:{i}") for i in range(10)))
    assert answers == [b"v"] * 10
    assert client.most == 3
