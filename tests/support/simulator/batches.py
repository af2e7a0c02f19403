"""Files and Batch API jobs: ``/v1/files`` and ``/v1/batches``, in the shapes the API reference
gives and the ``openai`` client parses (``client.files.*``, ``client.batches.*``).

A job's state is a function of time, worked out whenever it is read (:func:`advance`), so no
background task runs: ``validating`` at creation, ``in_progress`` at once, ``completed`` after
``batch_delay_ms``, its items finishing evenly over that time. A job cancelled, or expired (after
``batch_expire_ms`` or a queued :class:`BatchFault`), keeps the items finished by then in its
output file; the rest get an error line each (``batch_cancelled``, ``batch_expired``). A
``fail`` fault, or an input file that does not parse, names two endpoints or models, or repeats
a ``custom_id``, fails the job (``errors``, no output file). Each item runs through the same
handler as its synchronous twin (:mod:`.endpoints`), so its body is what the synchronous call
would have answered, and a request the API refuses becomes a line of the error file with that
status and body. Items are logged in :attr:`.state.SimStats.batch_calls` with their usage.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import itertools
import time
from collections.abc import Callable
from typing import Any, Literal

import orjson
from aiohttp import web

from tests.support.simulator import endpoints, protocol, state

BATCH_ENDPOINTS = {
    "/v1/chat/completions": ("chat", endpoints.chat),
    "/v1/completions": ("completions", endpoints.completions),
    "/v1/embeddings": ("embeddings", endpoints.embeddings),
}
PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
WINDOW_SECONDS = 24 * 3600
_ids = itertools.count(1)


@dataclasses.dataclass
class BatchFault:
    """What the next job created does instead of completing: ``expire`` after ``after_ms``
    (the items finished by then are answered), or ``fail`` validation."""

    mode: Literal["expire", "fail"] = "expire"
    after_ms: float = 0.0


@dataclasses.dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclasses.dataclass
class StoredBatch:
    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    started: float
    """Wall-clock time of creation, as a float (``created_at`` is its integer part)."""
    lines: list[dict[str, Any]]
    delay: float
    expire_after: float | None
    fail: list[dict[str, Any]] | None
    status: str = "in_progress"
    finished: int = 0
    """Items run so far (the first ones of `lines`)."""
    failed: int = 0
    outputs: list[bytes] = dataclasses.field(default_factory=list)
    errors: list[bytes] = dataclasses.field(default_factory=list)
    usage: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    )
    times: dict[str, int] = dataclasses.field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        created = int(self.started)
        usage = self.usage
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.lines[0]["body"].get("model") if self.lines else None,
            "errors": None if self.fail is None else {"object": "list", "data": self.fail},
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": created,
            "in_progress_at": self.times.get("in_progress_at"),
            "expires_at": created + WINDOW_SECONDS,
            "finalizing_at": self.times.get("finalizing_at"),
            "completed_at": self.times.get("completed_at"),
            "failed_at": self.times.get("failed_at"),
            "expired_at": self.times.get("expired_at"),
            "cancelling_at": self.times.get("cancelling_at"),
            "cancelled_at": self.times.get("cancelled_at"),
            "request_counts": {
                "total": len(self.lines),
                "completed": self.finished - self.failed,
                "failed": self.failed,
            },
            "usage": {
                "input_tokens": usage["input_tokens"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": usage["output_tokens"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["total_tokens"],
            },
            "metadata": self.metadata,
        }


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):012x}"


# ---- /v1/files ----------------------------------------------------------------------------


def upload_file(ctx: endpoints.Ctx) -> endpoints.Reply:
    fields = multipart_fields(ctx.request.headers.get("Content-Type", ""), ctx.raw)
    purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
    if "file" not in fields:
        raise protocol.ApiError(400, "'file' is a required property", param="file")
    if purpose not in PURPOSES:
        raise protocol.ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
    filename, content = fields["file"]
    stored = StoredFile(new_id("file-"), filename or "upload", purpose, content, int(time.time()))
    with ctx.shared.lock:
        ctx.shared.files[stored.id] = stored
    return protocol.json_response(stored.to_dict(), request_id=ctx.request_id)


def multipart_fields(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a ``multipart/form-data`` body; 400 when it is not one."""
    if not content_type.startswith("multipart/form-data"):
        raise protocol.ApiError(400, "Expected a multipart/form-data body.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


def _file(ctx: endpoints.Ctx) -> StoredFile:
    file_id = ctx.request.match_info["file_id"]
    found: StoredFile | None = ctx.shared.files.get(file_id)
    if found is None:
        raise protocol.ApiError(404, f"No such File object: {file_id}", param="id")
    return found


def get_file(ctx: endpoints.Ctx) -> endpoints.Reply:
    return protocol.json_response(_file(ctx).to_dict(), request_id=ctx.request_id)


def file_content(ctx: endpoints.Ctx) -> endpoints.Reply:
    content = _file(ctx).content
    headers = {"x-request-id": ctx.request_id}
    return web.Response(body=content, content_type="application/octet-stream", headers=headers)


def delete_file(ctx: endpoints.Ctx) -> endpoints.Reply:
    stored = _file(ctx)
    with ctx.shared.lock:
        del ctx.shared.files[stored.id]
    payload = {"id": stored.id, "object": "file", "deleted": True}
    return protocol.json_response(payload, request_id=ctx.request_id)


def list_files(ctx: endpoints.Ctx) -> endpoints.Reply:
    purpose = ctx.request.query.get("purpose")
    files = [f for f in ctx.shared.files.values() if purpose in (None, f.purpose)]
    return _page(ctx, [f.to_dict() for f in files])


# ---- /v1/batches --------------------------------------------------------------------------


def create_batch(ctx: endpoints.Ctx) -> endpoints.Reply:
    body = protocol.require_object(ctx.body)
    endpoint = body.get("endpoint")
    if endpoint not in BATCH_ENDPOINTS:
        raise protocol.ApiError(
            400, f"Invalid value for 'endpoint': {endpoint!r}.", param="endpoint"
        )
    if body.get("completion_window") != "24h":
        raise protocol.ApiError(
            400, "Invalid value for 'completion_window': expected '24h'.", param="completion_window"
        )
    file_id = body.get("input_file_id")
    source: StoredFile | None = ctx.shared.files.get(file_id) if isinstance(file_id, str) else None
    if source is None:
        raise protocol.ApiError(400, f"No such File object: {file_id}", param="input_file_id")
    lines, problems = parse_input(source.content, endpoint)
    fault = _take_fault(ctx.shared)
    if fault is not None and fault.mode == "fail":
        problems = problems or [{"code": "invalid_request", "message": "Simulated failure."}]
    config = ctx.config
    expire_ms = fault.after_ms if fault is not None else config.batch_expire_ms
    batch = StoredBatch(
        id=new_id("batch_"),
        endpoint=endpoint,
        input_file_id=source.id,
        metadata=body.get("metadata"),
        started=time.time(),
        lines=lines,
        delay=config.batch_delay_ms / 1000,
        expire_after=None if expire_ms is None else expire_ms / 1000,
        fail=[{**p, "param": None} for p in problems] if problems else None,
        status="validating",
    )
    with ctx.shared.lock:
        ctx.shared.batches[batch.id] = batch
    return protocol.json_response(batch.to_dict(), request_id=ctx.request_id)


def parse_input(content: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lines of an input file and what is wrong with them (the API's validation)."""
    lines: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[Any] = set()
    for number, text in enumerate(content.splitlines(), start=1):
        try:
            line = orjson.loads(text)
        except orjson.JSONDecodeError:
            problems.append({"code": "invalid_json_line", "line": number, "message": "Not JSON."})
            continue
        if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
            problems.append({"code": "invalid_request", "line": number, "message": "No body."})
            continue
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or custom_id in seen:
            message = "The custom_id must be a string, unique within the file."
            problems.append({"code": "duplicate_custom_id", "line": number, "message": message})
        if line.get("url") != endpoint or line.get("method") != "POST":
            message = f"The url must be {endpoint} and the method POST, as the batch's."
            problems.append({"code": "mismatched_endpoint", "line": number, "message": message})
        seen.add(str(custom_id))
        models.add(line["body"].get("model"))
        lines.append(line)
    if len(models) > 1:
        message = "All requests in a batch must use the same model."
        problems.append({"code": "mismatched_model", "line": None, "message": message})
    if not lines and not problems:
        problems.append({"code": "empty_file", "line": None, "message": "The file is empty."})
    return lines, problems


def _take_fault(shared: state.State) -> BatchFault | None:
    with shared.lock:
        return shared.batch_faults.popleft() if shared.batch_faults else None


def _batch(ctx: endpoints.Ctx) -> StoredBatch:
    batch_id = ctx.request.match_info["batch_id"]
    found: StoredBatch | None = ctx.shared.batches.get(batch_id)
    if found is None:
        raise protocol.ApiError(404, f"No batch found with id '{batch_id}'.", code="not_found")
    return found


def get_batch(ctx: endpoints.Ctx) -> endpoints.Reply:
    batch = _batch(ctx)
    advance(batch, ctx)
    return protocol.json_response(batch.to_dict(), request_id=ctx.request_id)


def cancel_batch(ctx: endpoints.Ctx) -> endpoints.Reply:
    batch = _batch(ctx)
    advance(batch, ctx)
    if batch.status in ("validating", "in_progress", "finalizing"):
        batch.status = "cancelling"  # the next read finds it cancelled
        batch.times["cancelling_at"] = int(time.time())
    elif batch.status not in ("cancelling", "cancelled"):
        raise protocol.ApiError(
            409, f"Cannot cancel a batch with status '{batch.status}'.", error_type="conflict"
        )
    return protocol.json_response(batch.to_dict(), request_id=ctx.request_id)


def list_batches(ctx: endpoints.Ctx) -> endpoints.Reply:
    batches = sorted(ctx.shared.batches.values(), key=lambda b: b.started, reverse=True)
    for batch in batches:
        advance(batch, ctx)
    return _page(ctx, [b.to_dict() for b in batches])


def _page(ctx: endpoints.Ctx, data: list[dict[str, Any]]) -> endpoints.Reply:
    """One page of a list, after the `after` id, at most `limit` (20) long."""
    after = ctx.request.query.get("after")
    if after is not None:
        ids = [d["id"] for d in data]
        data = data[ids.index(after) + 1 :] if after in ids else []
    raw_limit = ctx.request.query.get("limit", "20")
    limit = max(1, int(raw_limit)) if raw_limit.isdigit() else 20
    page, more = data[:limit], len(data) > limit
    payload = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": more,
    }
    return protocol.json_response(payload, request_id=ctx.request_id)


# ---- running a job ------------------------------------------------------------------------


def advance(batch: StoredBatch, ctx: endpoints.Ctx) -> None:
    """Bring `batch` to where it is at this moment: run the items due, settle its status."""
    now = time.time()
    stamp = int(now)
    if batch.status == "validating":
        if batch.fail is not None:
            batch.status = "failed"
            batch.times["failed_at"] = stamp
            return
        batch.status = "in_progress"
        batch.times["in_progress_at"] = stamp
    if batch.status not in ("in_progress", "cancelling"):
        return
    elapsed = now - batch.started
    expired = batch.expire_after is not None and elapsed >= batch.expire_after
    if expired:
        elapsed = batch.expire_after  # type: ignore[assignment]
    share = 1.0 if batch.delay <= 0 else min(1.0, elapsed / batch.delay)
    _run(batch, ctx, int(len(batch.lines) * share))
    if batch.status == "cancelling":
        _close(batch, ctx, "cancelled", "batch_cancelled", "The batch was cancelled.")
    elif batch.finished == len(batch.lines):
        batch.times["finalizing_at"] = stamp
        _close(batch, ctx, "completed", "", "")
    elif expired:
        message = "This request could not be executed before the completion window expired."
        _close(batch, ctx, "expired", "batch_expired", message)


def _run(batch: StoredBatch, ctx: endpoints.Ctx, upto: int) -> None:
    """Run items `finished..upto` through their endpoint's handler."""
    kind, handler = BATCH_ENDPOINTS[batch.endpoint]
    for line in batch.lines[batch.finished : upto]:
        status, body, usage = _answer(ctx, kind, handler, line["body"], batch.id)
        request_id = f"req_simbatch{next(_ids):010d}"
        response = {"status_code": status, "request_id": request_id, "body": body}
        record = {"id": new_id("batch_req_"), "custom_id": line["custom_id"], "response": response}
        record["error"] = None
        if status == 200:
            batch.outputs.append(orjson.dumps(record))
        else:
            batch.failed += 1
            batch.errors.append(orjson.dumps(record))
        if usage is not None:
            prompt = usage.get("prompt_tokens", 0)
            completion = usage.get("completion_tokens", 0)
            batch.usage["input_tokens"] += prompt
            batch.usage["output_tokens"] += completion
            batch.usage["total_tokens"] += prompt + completion
        batch.finished += 1


def _answer(
    ctx: endpoints.Ctx,
    kind: str,
    handler: Callable[[endpoints.Ctx], endpoints.Reply],
    body: dict[str, Any],
    batch_id: str,
) -> tuple[int, Any, dict[str, Any] | None]:
    """(status, JSON body, usage) of one item, as its synchronous call would have answered."""
    seq = next(ctx.shared.seq)
    inputs = protocol.input_items(body.get("input" if kind == "embeddings" else "prompt")) or []
    if kind == "chat":
        inputs = [body.get("messages")]
    call = state.CallRecord(
        seq=seq,
        endpoint=kind,
        method="POST",
        path=batch_id,
        model=body.get("model") if isinstance(body.get("model"), str) else None,
        n_inputs=len(inputs),
        inputs=inputs,
        authorization=ctx.call.authorization,
        raw_headers=(),
        body=body,
        stream=False,
        at=time.time(),
        batch_id=batch_id,
    )
    item = endpoints.Ctx(ctx.request, b"", body, ctx.config, call, f"req_sim{seq:010d}", ctx.shared)
    try:
        if body.get("stream") is True:
            raise protocol.ApiError(400, "Streaming is not supported in batches.", param="stream")
        reply = handler(item)
    except protocol.ApiError as err:
        reply = protocol.error_response(err)
    assert isinstance(reply, web.Response)
    assert isinstance(reply.body, bytes)
    call.status = reply.status
    ctx.shared.record_batch_call(call)
    return reply.status, orjson.loads(reply.body), call.usage


def _close(batch: StoredBatch, ctx: endpoints.Ctx, status: str, code: str, message: str) -> None:
    """End the job: error lines for the items it never ran, its output and error files."""
    for line in batch.lines[batch.finished :]:
        error = {"code": code, "message": message}
        record = {"id": new_id("batch_req_"), "custom_id": line["custom_id"], "response": None}
        batch.errors.append(orjson.dumps({**record, "error": error}))
    batch.status = status
    batch.times[f"{status}_at"] = int(time.time())
    if batch.outputs:
        batch.output_file_id = _store(ctx, "batch_output", batch.outputs).id
    if batch.errors:
        batch.error_file_id = _store(ctx, "batch_output", batch.errors).id


def _store(ctx: endpoints.Ctx, purpose: str, lines: list[bytes]) -> StoredFile:
    content = b"\n".join(lines) + b"\n"
    stored = StoredFile(new_id("file-"), "batch_output.jsonl", purpose, content, int(time.time()))
    with ctx.shared.lock:
        ctx.shared.files[stored.id] = stored
    return stored
