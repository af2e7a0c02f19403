"""JSON-RPC 2.0 as MCP uses it: messages read from bytes, results, errors and notifications built.

Pure: bytes in, dicts and bytes out. The gateway's transport (`transport.py`) reads a POST body
with `parse()`, and answers with `result()`/`error()`; `RPCError` carries a JSON-RPC error
through the layers to the caller unchanged (an upstream's own error included).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
REQUEST_CANCELLED = -32800
"""What the session-based transport answers a request its caller cancelled."""

RequestId = str | int

NAMED_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""Methods whose param names what they act on: sent as `Mcp-Name` at 2026-07-28, and checked
against that header by the gateway's transport."""


class RPCError(Exception):
    """A JSON-RPC error to answer with: `code`, `message`, and optional `data`."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    def __repr__(self) -> str:
        return f"<RPCError {self.code}: {self.message}>"


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC request (with an `id`) or notification (without)."""

    method: str
    params: dict[str, Any]
    id: RequestId | None = None

    @property
    def is_request(self) -> bool:
        return self.id is not None


def parse(body: bytes) -> Message:
    """One message from a POST body, or `RPCError` (-32700 not JSON, -32600 not a message).

    Batches are refused: the Streamable HTTP transport dropped them in 2025-06-18, and no
    revision the gateway speaks sends them.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RPCError(PARSE_ERROR, f"Parse error: {e}") from None
    if not isinstance(data, dict):
        raise RPCError(INVALID_REQUEST, "Invalid request: expected one JSON-RPC object")
    method, params, id_ = data.get("method"), data.get("params", {}), data.get("id")
    if data.get("jsonrpc") != "2.0" or not isinstance(method, str) or not method:
        raise RPCError(INVALID_REQUEST, "Invalid request: not a JSON-RPC 2.0 request")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RPCError(INVALID_REQUEST, "Invalid request: params must be an object")
    if id_ is not None and (isinstance(id_, bool) or not isinstance(id_, str | int)):
        raise RPCError(INVALID_REQUEST, "Invalid request: id must be a string or an integer")
    return Message(method, params, id_)


def result(id_: RequestId | None, value: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": id_, "result": value})


def result_raw(id_: RequestId | None, value: bytes) -> bytes:
    """A response around a result already serialized (the gateway's remembered lists)."""
    return b'{"jsonrpc":"2.0","id":%b,"result":%b}' % (orjson.dumps(id_), value)


def error(id_: RequestId | None, failure: RPCError) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": id_, "error": failure.body()})


def notification(method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return orjson.dumps(message)
