"""The memory job store and the claim rule that makes every answer single (`jobstore`), and
the latency estimator's decisions (`estimator`)."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from sluice.proxy.http import errors
from sluice.proxy.llm.deferred import estimator, jobstore, records, redisstore

GROUP = records.Group("chat_completions", "gpt-4o-mini", {"authorization": "Bearer k"}, "")


def item(n: int, deadline: float = 1000.0) -> records.Item:
    return records.Item(f"job_{n}", "tenant", GROUP.key, {"model": "m"}, deadline, float(n))


async def test_waiting_items_are_taken_oldest_first_and_only_once() -> None:
    store = jobstore.MemoryJobStore(60, clock=lambda: 0.0)
    for n in (3, 1, 2):
        await store.add(item(n), GROUP, waiting=True)
    assert await store.waiting(GROUP.key) == (3, 1.0)
    assert [i.id for i in await store.take(GROUP.key, 2)] == ["job_1", "job_2"]
    assert [i.id for i in await store.take(GROUP.key, 2)] == ["job_3"]
    assert await store.take(GROUP.key, 2) == []


async def test_a_group_no_item_waits_for_is_forgotten_until_one_does() -> None:
    store = jobstore.MemoryJobStore(60, clock=lambda: 0.0)
    await store.add(item(1), GROUP, waiting=True)
    await store.forget(GROUP.key)
    assert await store.groups() == [GROUP.key]  # an item waits: still listed
    await store.take(GROUP.key, 2)
    await store.forget(GROUP.key)
    assert await store.groups() == []
    assert await store.group(GROUP.key) == GROUP  # its record stays for its jobs
    await store.add(item(2), GROUP, waiting=True)
    assert await store.groups() == [GROUP.key]


async def test_only_the_first_claim_answers_and_a_claimed_item_is_not_queued_again() -> None:
    store = jobstore.MemoryJobStore(60, clock=lambda: 0.0)
    await store.add(item(1), GROUP, waiting=True)
    assert await store.claim("job_1")
    assert not await store.claim("job_1")  # the batch result after the fallback: ignored
    await store.requeue([item(1)])
    assert await store.waiting(GROUP.key) == (0, None)
    assert await store.still_open(["job_1"]) == []


async def test_due_lists_open_items_by_deadline_and_results_expire() -> None:
    now = [0.0]
    store = jobstore.MemoryJobStore(10, clock=lambda: now[0])
    await store.add(item(1, deadline=5), GROUP, waiting=True)
    await store.add(item(2, deadline=50), GROUP, waiting=True)
    assert await store.due(before=10) == ["job_1"]
    await store.finish("job_1", records.Result(200, b"{}"))
    assert await store.result("job_1") == records.Result(200, b"{}")
    now[0] = 11
    assert await store.result("job_1") is None


class CountingRedis:
    """A client whose GET takes a few loop turns and counts the calls in flight at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def get(self, key: str) -> bytes | None:
        self.now += 1
        self.most = max(self.most, self.now)
        for _ in range(3):
            await asyncio.sleep(0)
        self.now -= 1
        return None


async def test_the_redis_store_keeps_at_most_its_pool_size_of_commands_in_flight() -> None:
    """The cluster and Sentinel pools raise when full instead of waiting: the store waits."""
    client = CountingRedis()
    store = redisstore.RedisJobStore(client, "p:", 60, in_flight=3)  # type: ignore[arg-type]
    assert await asyncio.gather(*(store.result(f"job_{i}") for i in range(10))) == [None] * 10
    assert client.most == 3


async def test_a_cluster_without_an_answering_node_is_a_503_of_the_redis_store() -> None:
    class Unreachable:
        async def get(self, key: str) -> bytes | None:
            # No RedisError: what the cluster client raises when no node answers.
            raise redis.exceptions.RedisClusterException("Redis Cluster cannot be connected.")

    store = redisstore.RedisJobStore(Unreachable(), "p:", 60)  # type: ignore[arg-type]
    with pytest.raises(errors.ProxyError) as caught:
        await store.result("job_1")
    assert caught.value.status == 503


async def test_an_answered_item_is_forgotten_when_its_result_expires_not_before() -> None:
    now = [0.0]
    store = jobstore.MemoryJobStore(10, clock=lambda: now[0])
    for n in (1, 2):
        await store.add(item(n), GROUP, waiting=True)
        assert await store.claim(f"job_{n}")
        await store.finish(f"job_{n}", records.Result(200, b"{}"))
        now[0] += 5
    now[0] = 11
    await store.due(before=0)
    assert await store.item("job_1") is None
    assert await store.item("job_2") == item(2)


def test_results_survive_packing() -> None:
    result = records.Result(400, b'{"error":{}}', records.SYNC, "req_1")
    assert records.Result.unpack(result.pack()) == result


def test_a_long_request_id_is_cut_between_characters_when_packed() -> None:
    result = records.Result(200, b"{}", records.BATCH, "req_" + "\u00e9" * 200)
    unpacked = records.Result.unpack(result.pack())
    assert unpacked.request_id == "req_" + "\u00e9" * 125  # 254 of the 255 bytes
    assert unpacked.body == b"{}"


def test_groups_differ_by_payer_and_model() -> None:
    other_payer = records.Group(GROUP.kind, GROUP.model, {"authorization": "Bearer j"}, "")
    other_model = records.Group(GROUP.kind, "gpt-4o", GROUP.headers, "")
    assert len({GROUP.key, other_payer.key, other_model.key}) == 3


def test_the_estimator_learns_and_keeps_a_reserve_for_the_synchronous_call() -> None:
    latency = estimator.LatencyEstimator(batch_seconds=3600, sync_seconds=10, margin_seconds=5)
    assert latency.reserve == 15
    assert not latency.fits(3000, flush_after=60)  # a batch is thought to take an hour
    latency.batch.observe(100)
    assert latency.batch.value == 100  # the first observation replaces the assumption
    assert latency.fits(3000, flush_after=60)
    latency.batch.observe(200)
    assert latency.batch.value == 130
