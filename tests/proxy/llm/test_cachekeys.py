"""Canonical cache keys of LLM answers: what changes a key, and what does not."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluice.proxy.cache import keyspace
from sluice.proxy.llm import cachekeys

PREFIX = "sluice:"
BASE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
}


def key(payload: dict[str, Any], tenant: str = "tenant-a", kind: str = "chat") -> str:
    return cachekeys.response_key(PREFIX, kind, tenant, payload)


def test_the_order_of_parameters_at_any_depth_does_not_change_the_key() -> None:
    shuffled = {
        "temperature": 0,
        "messages": [{"content": "hi", "role": "user"}],
        "model": "gpt-4o-mini",
    }
    assert key(shuffled) == key(BASE)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"model": "gpt-4o"}, id="model"),
        pytest.param({"messages": [{"role": "user", "content": "hello"}]}, id="messages"),
        pytest.param({"messages": [{"role": "system", "content": "hi"}]}, id="message-role"),
        pytest.param({"temperature": 0.5}, id="temperature"),
        pytest.param({"top_p": 0.1}, id="top_p"),
        pytest.param({"seed": 1}, id="seed"),
        pytest.param({"n": 2}, id="n"),
        pytest.param({"max_tokens": 5}, id="max_tokens"),
        pytest.param({"max_completion_tokens": 5}, id="max_completion_tokens"),
        pytest.param({"stop": ["x"]}, id="stop"),
        pytest.param({"presence_penalty": 1}, id="presence_penalty"),
        pytest.param({"frequency_penalty": 1}, id="frequency_penalty"),
        pytest.param({"logit_bias": {"1": 5}}, id="logit_bias"),
        pytest.param({"logprobs": True}, id="logprobs"),
        pytest.param({"top_logprobs": 2}, id="top_logprobs"),
        pytest.param({"response_format": {"type": "json_object"}}, id="response_format"),
        pytest.param({"tools": [{"type": "function", "function": {"name": "f"}}]}, id="tools"),
        pytest.param({"tool_choice": "none"}, id="tool_choice"),
        pytest.param({"parallel_tool_calls": False}, id="parallel_tool_calls"),
        pytest.param({"reasoning_effort": "low"}, id="reasoning_effort"),
        pytest.param({"modalities": ["text", "audio"]}, id="modalities"),
        pytest.param({"prediction": {"type": "content", "content": "x"}}, id="prediction"),
        pytest.param({"some_provider_extra": 1}, id="unknown-extra"),
    ],
)
def test_every_parameter_that_changes_the_output_changes_the_key(change: dict[str, Any]) -> None:
    assert key({**BASE, **change}) != key(BASE)


@pytest.mark.parametrize("name", sorted(cachekeys.NOT_IN_KEY))
def test_parameters_that_cannot_change_the_output_leave_the_key_alone(name: str) -> None:
    assert key({**BASE, name: {"any": "value"}}) == key(BASE)


@pytest.mark.parametrize(
    "same",
    [
        pytest.param({"n": 1}, id="default-n"),
        pytest.param({"top_p": None}, id="null"),
    ],
)
def test_equivalent_spellings_give_the_same_key(same: dict[str, Any]) -> None:
    assert key({**BASE, **same}) == key(BASE)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param({"n": True}, {"n": 1}, id="true-is-not-1"),
        pytest.param({"max_tokens": 10.0}, {"max_tokens": 10}, id="float-is-not-int"),
        pytest.param({"temperature": 0.0}, {"temperature": 0}, id="zero-float-is-not-zero"),
        pytest.param({"logprobs": 0}, {"logprobs": False}, id="0-is-not-false"),
    ],
)
def test_spellings_an_upstream_may_answer_differently_give_different_keys(
    one: dict[str, Any], other: dict[str, Any]
) -> None:
    assert key({**BASE, **one}) != key({**BASE, **other})


def test_n_true_is_not_a_single_deterministic_answer() -> None:
    assert not cachekeys.deterministic({**BASE, "n": True})
    assert cachekeys.deterministic({**BASE, "n": 1})


@pytest.mark.parametrize(
    ("body", "faithful"),
    [
        pytest.param(b'{"seed": 9999999999999999999}', True, id="19-digits"),
        pytest.param(b'{"seed": -922337203685477580}', True, id="18-digits-negative"),
        pytest.param(b'{"seed": 18446744073709551616}', False, id="beyond-64-bits"),
        pytest.param(b'{"seed": -9223372036854775809}', False, id="below-i64"),
        pytest.param(b'{"seed": -123456789012345678901}', False, id="negative-beyond-64-bits"),
        pytest.param(b'{"temperature": 1e400}', False, id="beyond-a-double"),
        pytest.param(b'{"temperature": 1e-05}', True, id="small-exponent"),
        pytest.param(b'{"temperature": 0.25}', True, id="plain"),
        pytest.param(b'{"a":[1,18446744073709551616]}', False, id="in-a-list-no-spaces"),
        pytest.param(b'{"q": "model E300"}', True, id="exponent-like-inside-a-string"),
        pytest.param(b'{"image": "data:;base64,QUE1233E1234567890123456789"}', True, id="base64"),
        pytest.param(b'{"q": "a: 1e400, b"}', False, id="a-value-spelt-inside-a-string"),
    ],
)
def test_a_body_with_a_number_orjson_cannot_read_exactly_is_not_faithful(
    body: bytes, faithful: bool
) -> None:
    assert cachekeys.faithful(body) is faithful


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"temperature": 1E+100}', id="capital-exponent-plus"),
        pytest.param(b'{"temperature": 1e-100}', id="exponent-minus"),
        pytest.param(b'{"seed": 12345678901234567890}', id="20-digits"),
        pytest.param(b'{"seed": -1234567890123456789}', id="19-digits-negative"),
        pytest.param(b'{"q": "+1234567890123456789"}', id="19-digits-after-plus"),
        pytest.param(b'{"q": "e00 e+00 E-0 1234567890123456"}', id="short-of-every-rule"),
        pytest.param(b'{"q": "model E300"}', id="inside-a-string"),
    ],
)
def test_faithful_agrees_with_its_regex_where_the_quick_look_is_not_enough(body: bytes) -> None:
    assert cachekeys.faithful(body) is (cachekeys._UNFAITHFUL.search(body) is None)


def test_the_tenant_and_the_kind_change_the_key() -> None:
    assert key(BASE, tenant="tenant-b") != key(BASE)
    assert key(BASE, kind="completions") != key(BASE)


def test_the_key_layout_names_kind_tenant_and_model() -> None:
    parts = key(BASE).removeprefix(PREFIX).split(":")
    assert parts[0] == "chat"
    assert parts[1] == "t" + keyspace.tenant_id("tenant-a")
    assert parts[2] == "m" + keyspace.model_id("gpt-4o-mini")
    assert len(parts[3]) == 32


def embedding_key(tenant: str = "t", item: str | list[int] = "hello", **options: Any) -> str:
    payload = {"model": "text-embedding-3-small", "input": ["ignored"], **options}
    return cachekeys.EmbeddingKeys(PREFIX, tenant, payload).key(item)


def test_embedding_keys_depend_on_input_options_and_tenant_but_not_the_rest_of_input() -> None:
    assert embedding_key() == embedding_key(input=["other", "inputs"])
    assert embedding_key() == embedding_key(encoding_format="float")
    assert embedding_key() != embedding_key(encoding_format="base64")
    assert embedding_key() != embedding_key(dimensions=8)
    assert embedding_key() != embedding_key(tenant="u")
    assert embedding_key() != embedding_key(item="hello!")
    assert embedding_key() != embedding_key(model="text-embedding-3-large")
    assert embedding_key(item="1") != embedding_key(item=[1])
    assert embedding_key() == embedding_key(user="someone")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param({"temperature": 0}, True, id="temperature-0"),
        pytest.param({"temperature": 0.0}, True, id="temperature-0.0"),
        pytest.param({"temperature": 0.7, "seed": 3}, True, id="seed"),
        pytest.param({}, False, id="default-temperature"),
        pytest.param({"temperature": 0.7}, False, id="sampled"),
        pytest.param({"temperature": 0, "n": 2}, False, id="several-choices"),
        pytest.param({"temperature": 0, "n": 1}, True, id="n-1"),
        pytest.param({"temperature": False}, False, id="boolean-temperature"),
        pytest.param({"seed": True}, False, id="boolean-seed"),
    ],
)
def test_deterministic_requests(payload: dict[str, Any], expected: bool) -> None:
    assert cachekeys.deterministic(payload) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, (True, True), id="absent"),
        pytest.param(b"no-cache", (False, True), id="no-cache"),
        pytest.param(b"No-Store", (True, False), id="no-store"),
        pytest.param(b"no-cache, no-store", (False, False), id="both"),
        pytest.param(b"max-age=0, private", (True, True), id="others-ignored"),
    ],
)
def test_cache_control_directives(header: bytes | None, expected: tuple[bool, bool]) -> None:
    assert cachekeys.directives(header) == expected


def test_remembered_keys_equal_computed_ones_and_keep_tenants_apart() -> None:
    keys = cachekeys.ResponseKeys("p:", max_entries=2)
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    body = orjson.dumps(payload)
    first = keys.key("chat", "tenant-a", body, payload)
    assert first == cachekeys.response_key("p:", "chat", "tenant-a", payload)
    assert keys.key("chat", "tenant-a", body, payload) == first
    assert keys.key("chat", "tenant-b", body, payload) != first


def test_remembered_keys_are_bounded() -> None:
    keys = cachekeys.ResponseKeys("p:", max_entries=2, max_body=64)
    for n in range(5):
        payload = {"model": "m", "n": n}
        keys.key("chat", "t", orjson.dumps(payload), payload)
    assert len(keys._keys) <= 2
    big = {"model": "m", "prompt": "x" * 100}
    keys.key("completions", "t", orjson.dumps(big), big)
    assert all(len(body) <= 64 for *_, body in keys._keys)


def test_the_query_and_the_varying_headers_keep_requests_apart_and_nothing_else_does() -> None:
    variant = cachekeys.Variants().of
    plain = variant(b"", [(b"authorization", b"Bearer x"), (b"x-custom", b"1")])
    assert plain == b""
    beta = variant(b"", [(b"openai-beta", b"assistants=v2")])
    project = variant(b"", [(b"openai-project", b"proj_a")])
    azure = variant(b"api-version=2024-10-21", [])
    keys = {
        cachekeys.response_key("p:", "chat", "t", BASE, v) for v in (plain, beta, project, azure)
    }
    assert len(keys) == 4
    shuffled = [(b"openai-project", b"p"), (b"openai-beta", b"b")]
    assert variant(b"", shuffled) == variant(b"", shuffled[::-1])
    memo = cachekeys.ResponseKeys("p:")
    body = orjson.dumps(BASE)
    assert memo.key("chat", "t", body, BASE, beta) != memo.key("chat", "t", body, BASE, plain)


def test_headers_a_policy_names_keep_requests_apart_too_in_any_case() -> None:
    variants = cachekeys.Variants(["X-Tenant-Region"])
    eu = variants.of(b"", [(b"x-tenant-region", b"eu")])
    us = variants.of(b"", [(b"x-tenant-region", b"us")])
    assert eu != us
    assert cachekeys.Variants().of(b"", [(b"x-tenant-region", b"eu")]) == b""
