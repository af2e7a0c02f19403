"""The provider's Batch API, as deferred mode uses it: upload an input file, create a job, read
it, download its output and error files, cancel it. Calls go through `client.Upstream` (its
endpoints, pool and retries), with the headers of the job's group.

Shapes are OpenAI's (`/v1/files` with purpose `batch`, `/v1/batches` with a `24h` window):
a job's `status` is `validating`, `in_progress`, `finalizing`, `completed`, `failed`,
`expired`, `cancelling` or `cancelled`; each output or error line carries a `custom_id` and
either a `response` (`status_code`, `request_id`, `body`) or an `error` (`code`, `message`).
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import orjson

from sluice.proxy.http import errors
from sluice.proxy.llm import client

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
COMPLETION_WINDOW = "24h"


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """How one group's calls are sent: its headers (the proxy's key applied) and the query
    string its callers sent (Azure's `api-version`)."""

    headers: dict[str, str]
    query: str = ""

    def path(self, path: str) -> str:
        return f"{path}?{self.query}" if self.query else path

    def with_type(self, content_type: str) -> dict[str, str]:
        return {**self.headers, "content-type": content_type}


class ProviderError(Exception):
    """The Batch API refused or could not be reached; the caller tries again later."""


class BatchAPI:
    """The Batch API of one upstream."""

    def __init__(self, upstream: client.Upstream) -> None:
        self.upstream = upstream

    async def upload(self, route: Route, content: bytes) -> str:
        """Upload a JSONL input file; its file id."""
        boundary = "sluice" + secrets.token_hex(12)
        body = multipart(boundary, content)
        sent = route.with_type(f"multipart/form-data; boundary={boundary}")
        answer = await self._call("files", "POST", route.path("/files"), sent, body)
        return str(answer["id"])

    async def create(self, route: Route, file_id: str, endpoint: str) -> dict[str, Any]:
        request = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": COMPLETION_WINDOW,
            "metadata": {"created_by": "sluice"},
        }
        sent, body = route.with_type("application/json"), orjson.dumps(request)
        return await self._call("batches", "POST", route.path("/batches"), sent, body)

    async def retrieve(self, route: Route, batch_id: str) -> dict[str, Any]:
        path = route.path(f"/batches/{batch_id}")
        return await self._call("batches", "GET", path, route.headers, b"")

    async def cancel(self, route: Route, batch_id: str) -> dict[str, Any]:
        path = route.path(f"/batches/{batch_id}/cancel")
        return await self._call("batches", "POST", path, route.headers, b"")

    async def lines(self, route: Route, file_id: str | None) -> list[dict[str, Any]]:
        """The JSON lines of an output or error file (none for no file)."""
        if not file_id:
            return []
        path = route.path(f"/files/{file_id}/content")
        call = await self._send("files", "GET", path, route.headers, b"")
        content = await call.read(self.upstream.settings.timeout_seconds)
        if call.status != 200:
            raise ProviderError(f"file {file_id}: {call.status} {content[:200]!r}")
        parsed = []
        for line in content.splitlines():
            if line.strip():
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ProviderError(f"file {file_id}: a line is not JSON") from None
                if isinstance(value, dict):
                    parsed.append(value)
        return parsed

    async def _call(
        self, kind: str, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        call = await self._send(kind, method, path, headers, body)
        content = await call.read(self.upstream.settings.timeout_seconds)
        if call.status != 200:
            raise ProviderError(f"{method} {path}: {call.status} {content[:200]!r}")
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise ProviderError(f"{method} {path}: the answer is not JSON") from None
        if not isinstance(answer, dict) or "id" not in answer:
            raise ProviderError(f"{method} {path}: the answer is not an object with an id")
        return answer

    async def _send(
        self, kind: str, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> client.Call:
        try:
            return await self.upstream.send(kind, method, path, headers, body)
        except errors.ProxyError as e:
            raise ProviderError(f"{method} {path}: {e.message}") from None

    def __repr__(self) -> str:
        return f"<BatchAPI {self.upstream!r}>"


def multipart(boundary: str, content: bytes) -> bytes:
    """A `multipart/form-data` body with `purpose=batch` and the file."""
    dash = b"--" + boundary.encode()
    return b"\r\n".join(
        [
            dash,
            b'Content-Disposition: form-data; name="purpose"',
            b"",
            b"batch",
            dash,
            b'Content-Disposition: form-data; name="file"; filename="sluice-batch.jsonl"',
            b"Content-Type: application/jsonl",
            b"",
            content,
            dash + b"--",
            b"",
        ]
    )
