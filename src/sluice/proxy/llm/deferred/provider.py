"""The provider's Batch API, as deferred mode uses it: upload an input file, create a job, read
it, download its output and error files, cancel it. Calls go through `client.Upstream` (its
endpoints, pool and retries), with the headers of the job's group.

Shapes are OpenAI's (`/v1/files` with purpose `batch`, `/v1/batches` with a `24h` window):
a job's `status` is `validating`, `in_progress`, `finalizing`, `completed`, `failed`,
`expired`, `cancelling` or `cancelled`; each output or error line carries a `custom_id` and
either a `response` (`status_code`, `request_id`, `body`) or an `error` (`code`, `message`).
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from sluice.proxy.http import errors
from sluice.proxy.llm import client

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
COMPLETION_WINDOW = "24h"


class ProviderError(Exception):
    """The Batch API refused or could not be reached; the caller tries again later."""


class BatchAPI:
    """The Batch API of one upstream."""

    def __init__(self, upstream: client.Upstream) -> None:
        self.upstream = upstream

    async def upload(self, headers: dict[str, str], content: bytes) -> str:
        """Upload a JSONL input file; its file id."""
        boundary = "sluice" + secrets.token_hex(12)
        body = multipart(boundary, content)
        sent = {**headers, "content-type": f"multipart/form-data; boundary={boundary}"}
        answer = await self._call("files", "POST", "/files", sent, body)
        return str(answer["id"])

    async def create(self, headers: dict[str, str], file_id: str, endpoint: str) -> dict[str, Any]:
        request = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": COMPLETION_WINDOW,
            "metadata": {"created_by": "sluice"},
        }
        sent = {**headers, "content-type": "application/json"}
        return await self._call("batches", "POST", "/batches", sent, orjson.dumps(request))

    async def retrieve(self, headers: dict[str, str], batch_id: str) -> dict[str, Any]:
        return await self._call("batches", "GET", f"/batches/{batch_id}", headers, b"")

    async def cancel(self, headers: dict[str, str], batch_id: str) -> dict[str, Any]:
        return await self._call("batches", "POST", f"/batches/{batch_id}/cancel", headers, b"")

    async def lines(self, headers: dict[str, str], file_id: str | None) -> list[dict[str, Any]]:
        """The JSON lines of an output or error file (none for no file)."""
        if not file_id:
            return []
        call = await self._send("files", "GET", f"/files/{file_id}/content", headers, b"")
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
