"""Property-based tests of the real proxy's edge: whatever path, headers and body a caller sends,
the proxy answers (no hang, no 500 of its own), never sends anything upstream outside `/v1/`,
and two bodies share a cache entry only when an upstream could not tell them apart.

Requests are written on raw sockets, byte for byte as generated: HTTP clients would normalise
paths and headers. Example counts are bounded so the module runs in CI in well under a minute.
"""

from __future__ import annotations

import itertools
import json
import posixpath
import socket
import urllib.parse
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.proxy.llm import cachekeys
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.simulator import Simulator

pytestmark = pytest.mark.integration

EXAMPLES = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SEGMENTS = st.sampled_from(
    [
        "v1",
        "chat",
        "completions",
        "embeddings",
        "models",
        "files",
        "admin",
        "mcp",
        "metrics",
        "..",
        ".",
        "",
        "%2e%2e",
        "%2E",
        "%2f",
        "%2F..",
        "%252e%252e",
        "..%5c",
        "..;",
        "%00",
        "%23",
        "%3f",
        "\\",
        "gpt-4o",
        "x y",
        "é",
        "%ff",
    ]
) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=8)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"])
HEADER_NAMES = st.sampled_from(
    [
        "cache-control",
        "content-type",
        "openai-beta",
        "openai-project",
        "authorization",
        "x-custom",
        "accept",
        "mcp-session-id",
        "origin",
        "x-tenant",
        "api-key",
    ]
)
HEADER_VALUES = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
BODIES = (
    st.builds(lambda value: json.dumps(value).encode(), JSON)  # Python's: integers of any size
    | st.binary(max_size=200)
    | st.builds(
        lambda fields: json.dumps({"model": "gpt-4o-mini", **fields}).encode(),
        st.dictionaries(
            st.sampled_from(["messages", "input", "prompt", "stream", "n", "temperature", "seed"]),
            JSON,
            max_size=4,
        ),
    )
)


def raw_path(segments: list[str]) -> bytes:
    """A request target as a hostile caller might write it: `%` escapes kept, the rest quoted."""
    path = "/" + "/".join(segments)
    return urllib.parse.quote(path, safe="/%;\\").encode()


def exchange(port: int, request: bytes) -> bytes:
    """Send one request and read the answer to its end (the proxy closes: `Connection: close`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


@pytest.fixture
def proxy(start_proxy: ProxyFactory, simulator: Simulator) -> ProxyProcess:
    config = {
        "llm": {
            "upstream": {"url": simulator.url, "apiKeyEnv": "UPSTREAM_KEY"},
            "batching": {"maxWaitMilliseconds": 1},
            # Every answer cached, not only deterministic ones: so that a key which equated
            # `n: true` with `n: 1` (which the default mode never caches) would show.
            "cache": {"mode": "always"},
        },
        "listen": {"maxBodyBytes": 4096},
    }
    return start_proxy(config, env={"UPSTREAM_KEY": "sk-upstream"})


@EXAMPLES
@given(
    method=METHODS,
    segments=st.lists(SEGMENTS, min_size=1, max_size=5),
    prefix=st.booleans(),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
    body=BODIES,
)
def test_any_request_is_answered_without_a_500_and_nothing_leaves_v1(
    proxy: ProxyProcess,
    simulator: Simulator,
    method: str,
    segments: list[str],
    prefix: bool,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    target = raw_path(["v1", *segments] if prefix else segments)
    lines = [b"%s %s HTTP/1.1" % (method.encode(), target), b"Host: x", b"Connection: close"]
    lines += [f"{name}: {value}".encode() for name, value in headers]
    lines.append(b"Content-Length: %d" % len(body))
    answer = exchange(proxy.port, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), (target, answer[:200])
    assert not status_line.startswith(b"HTTP/1.1 500"), (target, body, answer[:400])
    for call in simulator.calls:
        path = call.path.split("?", 1)[0]
        assert posixpath.normpath(path) == path.rstrip("/"), path
        assert path.startswith("/v1/") or path == "/v1", path


# --- equal keys only for bodies an upstream could not tell apart ----------------------------------


def strictly(value: Any) -> Any:
    """`value` with its JSON types spelt out, so `true`, `1` and `1.0` compare unequal."""
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, strictly(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("array", tuple(strictly(v) for v in value))
    return (type(value).__name__, value)


def meaning(payload: dict[str, Any]) -> Any:
    """What the upstream reads from a chat body, as far as its answer goes: the fields the key
    rightly leaves out, top-level nulls and `n: 1` (the integer) removed."""
    kept = {k: v for k, v in payload.items() if k not in cachekeys.NOT_IN_KEY and v is not None}
    if type(kept.get("n")) is int and kept["n"] == 1:
        del kept["n"]
    return strictly(kept)


MUTATIONS = st.lists(
    st.sampled_from(
        [
            ("reorder", None),
            ("set", ("temperature", 0.0)),
            ("set", ("temperature", 0)),
            ("set", ("n", 1)),
            ("set", ("n", True)),
            ("set", ("max_tokens", 10)),
            ("set", ("max_tokens", 10.0)),
            ("set", ("top_p", None)),
            ("set", ("user", "someone")),
            ("set", ("stream_options", {"include_usage": False})),
            ("set", ("metadata", {"a": "b"})),
            ("set", ("seed", 7)),
            ("set", ("logprobs", False)),
            ("set", ("logprobs", 0)),
            ("set", ("x_extra", [1, "1"])),
            ("set", ("x_extra", [1.0, "1"])),
        ]
    ),
    max_size=4,
)
_unique = itertools.count()


def mutated(payload: dict[str, Any], mutations: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(payload)
    for kind, change in mutations:
        if kind == "reorder":
            out = dict(reversed(list(out.items())))
        else:
            name, value = change
            out[name] = value
    return out


@EXAMPLES
@given(first=MUTATIONS, second=MUTATIONS)
def test_two_bodies_share_an_entry_only_when_the_upstream_could_not_tell_them_apart(
    proxy: ProxyProcess, simulator: Simulator, first: list[Any], second: list[Any]
) -> None:
    base = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"property {next(_unique)}"}],
        "temperature": 0,
    }
    a, b = mutated(base, first), mutated(base, second)
    statuses, results = [], []
    for payload in (a, b):
        body = orjson.dumps(payload)
        answer = exchange(
            proxy.port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer sk-caller\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        statuses.append(int(head.split(b" ", 2)[1]))
        results.append(head.split(b"x-sluice-cache: ", 1)[1].split(b"\r\n", 1)[0])
    same = meaning(a) == meaning(b)
    if results[1] == b"hit":
        assert same, (a, b)
    if same and statuses[0] == 200 and results[0] == b"miss":
        assert results[1] == b"hit", (a, b, results)
