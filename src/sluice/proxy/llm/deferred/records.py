"""What deferred mode keeps: items (one per deferred request, its job id also its `custom_id`),
the groups they are batched by, the Batch API jobs submitted, and results. Each is a small
frozen value with a JSON (or packed bytes) form, so the memory and Redis stores hold the same.

Pure: no I/O. Group headers are those that say who pays and how the upstream behaves
(`dispatching.BILLING_HEADERS`, `cachekeys.VARYING_HEADERS` and `llm.varyHeaders`,
`authorization`): a job is sent with its group's, so requests that differ in one never share a
job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Any

import orjson

ENDPOINTS = {
    "chat_completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
"""Kinds of request that can be deferred, and the Batch API's `url`/`endpoint` for each."""

BATCH, SYNC, FAILED = 0, 1, 2
"""How a result came: from a Batch API job, from a synchronous call, or as an error of ours."""
PATHS = {BATCH: "batch", SYNC: "sync", FAILED: "error"}
_RESULT = struct.Struct("<HB")


@dataclasses.dataclass(frozen=True, slots=True)
class Group:
    """What items of one Batch API job share: endpoint, model, the headers it is sent with."""

    kind: str
    model: str
    headers: dict[str, str]
    query: str

    @property
    def key(self) -> str:
        material = orjson.dumps(
            [self.kind, self.model, self.query, self.headers], option=orjson.OPT_SORT_KEYS
        )
        return hashlib.blake2b(material, digest_size=16).hexdigest()

    def dumps(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def loads(cls, raw: bytes) -> Group:
        return cls(**orjson.loads(raw))


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """One deferred request; its `id` is the job's id and the Batch API `custom_id`."""

    id: str
    tenant: str
    group: str
    body: dict[str, Any]
    deadline: float
    """Wall-clock time by which the caller must have its answer."""
    enqueued_at: float

    def dumps(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def loads(cls, raw: bytes) -> Item:
        return cls(**orjson.loads(raw))

    def line(self, kind: str) -> bytes:
        """This item as a line of a Batch API input file."""
        return orjson.dumps(
            {"custom_id": self.id, "method": "POST", "url": ENDPOINTS[kind], "body": self.body}
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A submitted Batch API job, as kept until it ends."""

    id: str
    """The provider's batch id."""
    group: str
    items: list[str]
    submitted_at: float

    def dumps(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def loads(cls, raw: bytes) -> Job:
        return cls(**orjson.loads(raw))


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """An item's answer: status and body as the synchronous API would have sent them."""

    status: int
    body: bytes
    path: int = BATCH
    request_id: str = ""

    def pack(self) -> bytes:
        # At most 255 bytes, cut between characters: the upstream chose the id, and half a
        # character would make the kept result unreadable.
        rid = self.request_id.encode()[:255].decode(errors="ignore").encode()
        return _RESULT.pack(self.status, self.path) + bytes([len(rid)]) + rid + self.body

    @classmethod
    def unpack(cls, raw: bytes) -> Result:
        status, path = _RESULT.unpack_from(raw)
        at = _RESULT.size
        size = raw[at]
        rid = raw[at + 1 : at + 1 + size].decode()
        return cls(status, raw[at + 1 + size :], path, rid)
