"""The path of one ``/v1`` call: record it, apply a fault, compute, wait out the latency, answer.

:func:`serve` is the only place that waits or writes; the handlers in :mod:`.endpoints` only
compute. It records every call in :class:`.state.State` before any validation (so tests see bad
calls too), takes the next matching :class:`.state.Fault`, and turns a fault's mode into a
dropped connection, an error, a hang or a cut stream. :mod:`.server` routes requests here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Any

from aiohttp import web

from tests.support.simulator import endpoints, protocol, state


async def serve(
    shared: state.State, request: web.Request, endpoint: str, handler: endpoints.Handler
) -> web.StreamResponse:
    """The pipeline every /v1 call goes through: record, fault, compute, wait, answer."""
    started = time.monotonic()
    seq = next(shared.seq)
    raw = await request.read()
    body = protocol.parse_body(raw)
    call = _make_record(seq, endpoint, request, body, raw)
    shared.record(call)
    try:
        return await _answer(shared, request, handler, call, raw, body, started)
    except asyncio.CancelledError:  # the client hung up (aiohttp's handler_cancellation)
        call.hung_up_at = time.time()
        raise


async def _answer(
    shared: state.State,
    request: web.Request,
    handler: endpoints.Handler,
    call: state.CallRecord,
    raw: bytes,
    body: Any,
    started: float,
) -> web.StreamResponse:
    """Fault, compute, wait, answer: the part of a call its client can walk away from."""
    config = shared.config
    request_id = f"req_sim{call.seq:010d}"
    fault = shared.take_fault(call.endpoint)
    if fault is not None:
        call.fault = fault.mode
        if fault.mode in ("close", "reset"):
            return _drop_connection(request, rst=fault.mode == "reset")  # status stays None
    ctx = endpoints.Ctx(request, raw, body, config, call, request_id, shared)
    try:
        reply = _compute(ctx, handler, fault)
    except protocol.ApiError as err:
        reply = protocol.error_response(err, request_id)
    # The answer is computed before waiting, and the wait is what remains of the latency,
    # so the simulator's own CPU time hides inside the configured latency instead of
    # adding to it (a burst of N requests would otherwise end N handler-times late).
    wait = (config.latency_ms + config.per_input_latency_ms * call.n_inputs) / 1000
    if fault is not None and fault.mode == "hang":
        wait += fault.hang_seconds
    remaining = started + wait - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)
    cut = fault.after_chunks if fault is not None and fault.mode == "cut" else None
    response: web.StreamResponse
    if isinstance(reply, endpoints.Sse):
        delay = config.stream_chunk_delay_ms / 1000
        response = await _stream(request, reply.events, request_id, delay, cut, call)
    elif cut is not None:
        response = await _truncated(request, reply)  # a "cut" that hit a non-streamed answer
    else:
        response = reply
    call.status = response.status
    return response


def _make_record(
    seq: int, endpoint: str, request: web.Request, body: Any, raw: bytes
) -> state.CallRecord:
    """Describe the call for the log before any validation, so bad calls are visible too."""
    model: str | None = None
    inputs: list[Any] = []
    stream = False
    if isinstance(body, dict):
        model = body.get("model") if isinstance(body.get("model"), str) else None
        stream = body.get("stream") is True
        if endpoint == "embeddings":
            inputs = protocol.input_items(body.get("input")) or []
        elif endpoint == "completions":
            inputs = protocol.input_items(body.get("prompt")) or []
        elif endpoint == "chat" and isinstance(body.get("messages"), list):
            inputs = [body["messages"]]
    elif endpoint == "models":
        model = request.match_info.get("model_id")
    recorded_body = raw.decode("utf-8", "replace") if body is protocol.INVALID_JSON else body
    return state.CallRecord(
        seq=seq,
        endpoint=endpoint,
        method=request.method,
        path=request.path_qs,
        model=model,
        n_inputs=len(inputs),
        inputs=inputs,
        authorization=request.headers.get("Authorization"),
        raw_headers=request.raw_headers,
        body=recorded_body,
        stream=stream,
        at=time.time(),
    )


def _compute(
    ctx: endpoints.Ctx, handler: endpoints.Handler, fault: state.Fault | None
) -> endpoints.Reply:
    """Auth, injected status, body checks and the handler: everything but waiting and I/O."""
    protocol.check_auth(ctx.request, ctx.config)
    if fault is not None and fault.mode == "status":
        raise protocol.fault_error(fault)
    multipart = ctx.request.content_type == "multipart/form-data"  # a file upload
    if ctx.body is protocol.INVALID_JSON and not multipart:
        raise protocol.ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    return handler(ctx)


def _drop_connection(request: web.BaseRequest, *, rst: bool) -> web.Response:
    """Close the client's connection. aiohttp then fails to write the returned response with a
    ConnectionError, which it swallows quietly, so nothing else reaches the client."""
    transport = request.transport
    if transport is not None:
        if rst:  # SO_LINGER 0 makes close() send RST: the client sees ECONNRESET, not a clean EOF
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.close()  # close() (not abort()) flushes what was already written, e.g. chunks
    return web.Response(status=499)


async def _stream(
    request: web.Request,
    events: list[bytes],
    request_id: str,
    delay: float,
    cut: int | None,
    call: state.CallRecord,
) -> web.StreamResponse:
    """Write SSE ``events`` then ``[DONE]``, ``delay`` seconds apart; with ``cut``, stop after
    that many events and close the connection without ``[DONE]``."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "x-request-id": request_id,
        }
    )
    sent = events if cut is None else events[: max(0, cut)]
    tail = [] if cut is not None else [protocol.SSE_DONE]
    try:
        await response.prepare(request)
        if delay <= 0:  # one write: cheapest for benches, same bytes on the wire
            await response.write(b"".join(sent + tail))
        else:
            for i, event in enumerate(sent + tail):
                if i:
                    await asyncio.sleep(delay)
                await response.write(event)
    except ConnectionError:  # the client went away mid-stream: nothing left to do
        call.hung_up_at = time.time()
        return response
    if cut is not None:
        _drop_connection(request, rst=False)
    return response


async def _truncated(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send the headers and half of ``response``'s body, then close: a truncated answer."""
    body = response.body if isinstance(response.body, bytes) else b""
    out = web.StreamResponse(status=response.status, headers=response.headers)
    out.content_length = len(body)  # promise the full length so the client notices the cut
    with contextlib.suppress(ConnectionError):  # the client may already be gone
        await out.prepare(request)
        await out.write(body[: len(body) // 2])
    _drop_connection(request, rst=False)
    return out
