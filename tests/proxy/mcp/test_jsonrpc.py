"""JSON-RPC messages read from bytes: what is a request, a notification, or an error."""

from __future__ import annotations

import orjson
import pytest

from sluice.proxy.mcp import jsonrpc


def test_a_request_and_a_notification() -> None:
    request = jsonrpc.parse(b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}')
    assert (request.method, request.params, request.id, request.is_request) == (
        "tools/list",
        {},
        7,
        True,
    )
    note = jsonrpc.parse(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert not note.is_request


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b"{", jsonrpc.PARSE_ERROR, id="not-json"),
        pytest.param(b"[]", jsonrpc.INVALID_REQUEST, id="a-batch"),
        pytest.param(b'{"id":1,"method":"x"}', jsonrpc.INVALID_REQUEST, id="no-version"),
        pytest.param(b'{"jsonrpc":"2.0","id":1}', jsonrpc.INVALID_REQUEST, id="no-method"),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}',
            jsonrpc.INVALID_REQUEST,
            id="params-not-an-object",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":true,"method":"x"}', jsonrpc.INVALID_REQUEST, id="bool-id"
        ),
    ],
)
def test_what_is_not_a_message_is_the_spec_error(body: bytes, code: int) -> None:
    with pytest.raises(jsonrpc.RPCError) as caught:
        jsonrpc.parse(body)
    assert caught.value.code == code


def test_answers_are_json_rpc() -> None:
    assert orjson.loads(jsonrpc.result(1, {"a": 1})) == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"a": 1},
    }
    error = orjson.loads(jsonrpc.error(None, jsonrpc.RPCError(-32601, "nope", {"m": "x"})))
    assert error == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32601, "message": "nope", "data": {"m": "x"}},
    }
