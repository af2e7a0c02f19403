"""Cache keys of LLM answers: the canonical form of a request, and which requests may be cached.

Peers served wrong answers from keys that left out parameters or the tenant (FACTS.md), so the
rule here is: everything in the body is in the key, except a short list of fields that cannot
change the answer. The canonical form is the body as JSON with

* keys sorted at every depth (orjson's `OPT_SORT_KEYS`); list order is kept, it is meaningful;
* top-level `null` values dropped (the API treats them as absent), and `n: 1` dropped (the
  default); nothing else is rewritten: `n: true` is not `n: 1` and `10.0` is not `10`, because an
  upstream may answer them differently (refuse one, accept the other), and a key must never
  equate two requests the upstream would not;
* the fields in `NOT_IN_KEY` left out:
  - `stream`, `stream_options`: the shape of the answer, not its content; a streamed and a
    non-streamed request share one entry (see `replay.py`);
  - `user`, `safety_identifier`: who the end user is, for the provider's abuse monitoring;
  - `metadata`, `store`: labels for, and storage of, the completion on the provider's side;
  - `service_tier`: price and latency class, same model and answer;
  - `prompt_cache_key`, `prompt_cache_retention`: routing hints for the provider's prompt cache.
  Anything else (model, messages, temperature, seed, n, tools, response_format, logprobs,
  max_tokens, provider-specific extras, ...) changes the key.

A body that orjson cannot read exactly (`faithful`) has no canonical form: it is never cached,
shared or merged, and goes upstream as its caller wrote it.

The tenant (`http.callers.Tenants`: a hash of the caller's credentials or the tenant header's
value) goes into the digest and into the key itself (`cache.keyspace.layout`), so one tenant
never reads another's entries and invalidation can select them; `shareAcrossTenants` replaces it
with `keyspace.SHARED`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from sluice.proxy.cache import keyspace

NOT_IN_KEY = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
_EMBEDDING_NOT_IN_KEY = NOT_IN_KEY | {"input"}
HEADER = b"x-sluice-cache"
"""The response header that says how an answer was found: hit, miss, shared or bypass."""
VARYING_HEADERS = frozenset(
    {
        b"openai-beta",
        b"openai-organization",
        b"openai-project",
        b"anthropic-version",
        b"anthropic-beta",
    }
)
"""Request headers that select the upstream's behaviour or who it bills: requests that differ
in one (or in the query string, Azure's `api-version`) never share an entry, a flight or a
merged call. `llm.varyHeaders` adds to them."""
_UNFAITHFUL = re.compile(rb"[\[:,]\s*(?:-\d{19}|\d{20}|-?\d+(?:\.\d+)?[eE][+-]?\d{3})")
"""Number tokens (where JSON puts a value: after `:`, `[` or `,`) that are integers which may lie
beyond 64 bits (20 digits, or 19 after a minus: orjson reads those as floats, so two different
ones would read alike) or have exponents of three digits (which may lie beyond a double's
range: orjson refuses them, Python's parser reads them as infinity). Anchored at a value's
start so that digits and `E300`s inside strings (base64 images, product names) do not count;
a string that itself holds `: 1e400` still does, which only costs that request the cache."""
_CLASSES = bytes.maketrans(b"123456789E-", b"000000000e+")
"""Every digit to `0`, `E` to `e`, `-` to `+`: `_UNFAITHFUL` can match only where the bytes
so translated hold one of `_SUSPECTS`, which C finds at a fraction of the regex's cost."""
_SUSPECTS = (b"0" * 19, b"e000", b"e+000")


class Variants:
    """What besides the body tells two requests apart: the query and the varying headers
    (`VARYING_HEADERS` and those a policy adds)."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.names = VARYING_HEADERS | {name.lower().encode("latin-1") for name in extra}

    def of(self, query: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        names = self.names
        picked = sorted(b"%s=%s" % (k, v) for k, v in headers if k in names)
        if not query and not picked:
            return b""
        return query + b"\0" + b"\0".join(picked)

    def __repr__(self) -> str:
        return f"<Variants {sorted(n.decode('latin-1') for n in self.names)}>"


def faithful(body: bytes) -> bool:
    """Does the parsed body say exactly what its bytes say? Not when it holds a number beyond
    what orjson reads exactly (`_UNFAITHFUL`). Runs on every cacheable request, a hit included:
    the regex (some 20 ns a byte) only reads a body that the translated bytes cannot clear."""
    classes = body.translate(_CLASSES)
    if not any(suspect in classes for suspect in _SUSPECTS):
        return True
    return _UNFAITHFUL.search(body) is None


def canonical(payload: Mapping[str, Any], skip: frozenset[str] = NOT_IN_KEY) -> bytes:
    """The body's canonical JSON (see the module docstring for the rules)."""
    kept: dict[str, Any] = {}
    for name, value in payload.items():
        if name in skip or value is None:
            continue
        kept[name] = value
    if type(kept.get("n")) is int and kept["n"] == 1:
        del kept["n"]
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def model_of(payload: Mapping[str, Any]) -> str:
    model = payload.get("model")
    return model if isinstance(model, str) else ""


def response_key(
    prefix: str, kind: str, tenant: str, payload: Mapping[str, Any], variant: bytes = b""
) -> str:
    """The key of a whole chat or completions answer."""
    material = f"{kind}\0{tenant}\0".encode() + variant + b"\0" + canonical(payload)
    digest = hashlib.blake2b(material, digest_size=16).hexdigest()
    return keyspace.layout(prefix, kind, tenant, model_of(payload), digest)


class ResponseKeys:
    """`response_key` remembered by request body, for the repeated identical bodies that hit.

    The canonical form and its hash cost ~2 µs of a ~15 µs in-process cache hit; a look-up by
    (kind, tenant, body) costs ~0.4 µs. The tenant is in the look-up as it is in the key, so one
    tenant's body never yields another's key. Bounded: bodies up to `max_body` bytes only, and
    the memo is emptied when it holds `max_entries` (no LRU bookkeeping on the hot path; hot
    bodies come back after one miss each), so it holds at most ~4.5 MiB with the defaults.
    """

    def __init__(self, prefix: str, max_entries: int = 1024, max_body: int = 4096) -> None:
        self.prefix = prefix
        self.max_entries = max_entries
        self.max_body = max_body
        self._keys: dict[tuple[str, str, bytes, bytes], str] = {}

    def key(
        self,
        kind: str,
        tenant: str,
        body: bytes,
        payload: Mapping[str, Any],
        variant: bytes = b"",
    ) -> str:
        """The key of `payload`, which is `body` parsed, sent with `variant`."""
        if len(body) > self.max_body:
            return response_key(self.prefix, kind, tenant, payload, variant)
        memo = (kind, tenant, variant, body)
        key = self._keys.get(memo)
        if key is None:
            if len(self._keys) >= self.max_entries:
                self._keys.clear()
            key = self._keys[memo] = response_key(self.prefix, kind, tenant, payload, variant)
        return key

    def __repr__(self) -> str:
        return f"<ResponseKeys {len(self._keys)}/{self.max_entries}>"


class EmbeddingKeys:
    """Keys of single embedding inputs: tenant, model and every option but `input`, plus the input.

    `encoding_format` defaults to `float` (the API's default), so leaving it out and naming it
    give one key; float and base64 entries are kept apart, each replayed exactly as received.
    """

    def __init__(
        self, prefix: str, tenant: str, payload: Mapping[str, Any], variant: bytes = b""
    ) -> None:
        options = dict(payload)
        options.setdefault("encoding_format", "float")
        self._base = hashlib.blake2b(digest_size=16)
        self._base.update(f"embeddings\0{tenant}\0".encode() + variant + b"\0")
        self._base.update(canonical(options, _EMBEDDING_NOT_IN_KEY) + b"\0")
        self._head = keyspace.layout(prefix, "embeddings", tenant, model_of(payload), "")

    def key(self, item: str | list[int]) -> str:
        material = self._base.copy()
        material.update(orjson.dumps(item))
        return self._head + material.hexdigest()


def repeatable(payload: Mapping[str, Any]) -> bool:
    """Would the request get the same answer twice? Only at an explicit temperature 0 or with a
    seed: the API's default temperature is 1. `bool` is an `int` in Python, but `false` is no
    temperature and `true` no seed."""
    temperature, seed = payload.get("temperature"), payload.get("seed")
    if type(temperature) in (int, float) and temperature == 0:
        return True
    return type(seed) is int


def deterministic(payload: Mapping[str, Any]) -> bool:
    """One answer (`n` absent or 1, not `true`) that is `repeatable`: worth caching by default."""
    n = payload.get("n")
    return (n is None or (type(n) is int and n == 1)) and repeatable(payload)


def directives(cache_control: bytes | None) -> tuple[bool, bool]:
    """(may read, may write) from a request's `Cache-Control`: `no-cache`, `no-store`."""
    if not cache_control:
        return True, True
    tokens = {part.strip().split(b"=", 1)[0] for part in cache_control.lower().split(b",")}
    return b"no-cache" not in tokens, b"no-store" not in tokens
