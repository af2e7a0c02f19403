"""What the simulator answers: simulated token counts, embedding vectors and reply texts.

Pure functions of the request, with no I/O and no simulator state, so tests can predict every
answer. The ``/v1`` handlers in :mod:`.endpoints` build their bodies from these; the package
re-exports :func:`count_tokens`, :func:`embedding_vector` and :func:`embedding_base64` so that
tests compute the same values. Only :func:`variant` may draw randomness, and only when asked.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
import struct
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, TypeAlias

import orjson

Item: TypeAlias = str | list[int]
"""One embedding input or completion prompt: a string or a token array."""

SYSTEM_FINGERPRINT = "fp_sluicesim"
MODEL_CREATED = 1_700_000_000  # fixed so /v1/models answers are byte-identical between runs
# Request fields that must not change the reply text (transport and sampling knobs). Everything
# else (model, messages, max_tokens, tools, ...) feeds the reply digest, so a cache that forgets a
# parameter in its key serves a visibly different answer.
NON_SEMANTIC_FIELDS: frozenset[str] = frozenset(
    {
        "stream",
        "stream_options",
        "n",
        "seed",
        "temperature",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    }
)
_PREVIEW_WORDS = 32  # echo at most this many words of the prompt, so replies stay small
_WORD_RE = re.compile(r"\s*\S+|\s+$")  # pieces whose concatenation is the original text


def count_tokens(item: str | Sequence[int]) -> int:
    """Simulated token count: words of a string (at least 1), or the length of a token array."""
    if isinstance(item, str):
        return max(1, len(item.split()))
    return len(item)


def _item_key(item: str | Sequence[int]) -> str | tuple[int, ...]:
    # Hashable form for the vector cache; strings and token arrays never collide (str vs tuple).
    return item if isinstance(item, str) else tuple(item)


@lru_cache(maxsize=65_536)
def _vector_bytes(model: str, key: str | tuple[int, ...], dimensions: int) -> bytes:
    """Little-endian float32 bytes of the vector: the single source for float and base64 output."""
    material = (
        b"s" + key.encode() if isinstance(key, str) else b"t" + ",".join(map(str, key)).encode()
    )
    digest = hashlib.shake_256(
        model.encode() + b"\0" + str(dimensions).encode() + b"\0" + material
    ).digest(2 * dimensions)
    # Each 16-bit word becomes k/1024 in [-1, 1]; then normalise to unit length like real models.
    raw = [(word % 2049 - 1024) / 1024 for word in struct.unpack(f"<{dimensions}H", digest)]
    norm = math.sqrt(sum(v * v for v in raw))
    if norm == 0.0:  # astronomically unlikely, but a zero vector cannot be normalised
        raw[0], norm = 1.0, 1.0
    # Packing to float32 rounds each value, so what we serve round-trips exactly through float32.
    return struct.pack(f"<{dimensions}f", *(v / norm for v in raw))


def embedding_vector(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """The vector the simulator returns for ``item``: unit length, every value exact in float32.

    Depends only on (model, item, dimensions), never on the other inputs of the request, so a
    proxy that splits or merges batches must still hand each caller exactly this vector.
    """
    data = _vector_bytes(model, _item_key(item), dimensions)
    return list(struct.unpack(f"<{dimensions}f", data))


def embedding_base64(model: str, item: str | list[int], dimensions: int) -> str:
    """The ``encoding_format="base64"`` form of :func:`embedding_vector` (little-endian float32)."""
    return base64.b64encode(_vector_bytes(model, _item_key(item), dimensions)).decode()


def digest(data: bytes) -> str:
    """A short fingerprint of ``data``, shown in reply texts."""
    return hashlib.sha256(data).hexdigest()[:8]


def semantic_bytes(body: Mapping[str, Any], also_skip: str = "") -> bytes:
    """Canonical bytes of the fields that define the answer (see ``NON_SEMANTIC_FIELDS``)."""
    kept = {k: v for k, v in body.items() if k not in NON_SEMANTIC_FIELDS and k != also_skip}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def split_pieces(text: str, words_per_piece: int) -> list[str]:
    """Split ``text`` into stream deltas whose concatenation is exactly ``text``."""
    words = _WORD_RE.findall(text)
    step = max(1, words_per_piece)
    return ["".join(words[i : i + step]) for i in range(0, len(words), step)]


def truncate_words(text: str, limit: int | None) -> tuple[str, str]:
    """Cut ``text`` to ``limit`` simulated tokens; returns (text, finish_reason)."""
    if limit is None:
        return text, "stop"
    words = _WORD_RE.findall(text)
    if len(words) <= limit:
        return text, "stop"
    return "".join(words[:limit]), "length"


def preview(item: Item) -> str:
    """The start of a prompt as a reply text quotes it (token arrays by their length)."""
    if isinstance(item, list):
        return f"<{len(item)} tokens>"
    words = item.split()
    return " ".join(words[:_PREVIEW_WORDS]) + (" ..." if len(words) > _PREVIEW_WORDS else "")


def variant(base: str, choice: int, randomise: bool) -> str:
    """Choice 0 is the plain answer; other choices and sampled answers get visible suffixes."""
    text = base if choice == 0 else f"{base} #{choice}"
    return f"{text} ~{random.getrandbits(32):08x}" if randomise else text


def usage(prompt: int, completion: int, *, detailed: bool = False) -> dict[str, Any]:
    """The ``usage`` object of a chat or legacy completion."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if detailed:  # chat completions carry the token details objects; legacy completions do not
        out["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        out["completion_tokens_details"] = {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return out


def model_object(model_id: str) -> dict[str, Any]:
    """One entry of ``/v1/models``."""
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "sluice-sim"}
