"""Merging several callers' embeddings inputs (or legacy completion prompts) into one upstream
request, and splitting the upstream's answer back into one answer per caller.

Pure functions over parsed JSON and bytes: `dispatching.py` does the I/O around them, and the
embeddings cache (`embeddings.py`) reads inputs and answers with the same `parse` and
`by_index`. Each caller owns a contiguous slice of the merged `input` (or `prompt`) array;
results are matched by their `index`, never by position, because upstreams may return them in
any order. `usage` is shared by largest remainder, so the callers' shares add up exactly to
what the upstream reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import orjson

Item = str | list[int]

CHARS_PER_TOKEN = 3
"""For token estimates of text: English runs near 4 characters a token, some scripts near 1;
3 errs towards smaller batches, and only the per-call token budget and usage shares use it."""


class MalformedAnswerError(ValueError):
    """An upstream answer that cannot be split (missing or duplicated indices, wrong shape)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Inputs:
    """One caller's `input` (or `prompt`) as a list of items of one kind."""

    items: list[Item]
    kind: Literal["text", "tokens"]
    tokens: int
    """Estimated tokens: exact for token arrays, `CHARS_PER_TOKEN` for text."""


def estimate(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN) or 1


def parse(value: Any) -> Inputs | None:
    """A string, list of strings, token array or list of token arrays; None for anything else
    or an empty string (the caller then goes alone, uncached, and gets the upstream's own answer).

    Token arrays are checked to the last token: the embeddings cache keys each input as it is,
    and a shape the upstream refuses must never reach a merged call or an entry.
    """
    if isinstance(value, str):
        return Inputs([value], "text", estimate(value)) if value else None
    if not isinstance(value, list) or not value:
        return None
    first = value[0]
    if isinstance(first, str):
        if not all(isinstance(x, str) and x for x in value):
            return None
        return Inputs(value, "text", sum(estimate(x) for x in value))
    if _tokens(value):
        return Inputs([value], "tokens", len(value))
    if all(isinstance(x, list) and x and _tokens(x) for x in value):
        return Inputs(value, "tokens", sum(len(x) for x in value))
    return None


def _tokens(value: list[Any]) -> bool:
    # `bool` is an `int` in Python, but `true` is no token.
    return all(type(token) is int for token in value)


def group_key(payload: dict[str, Any], field: str, kind: str) -> bytes:
    """Everything but `field`, canonically: requests that agree on it may share a call.

    The whole rest of the body is in the key, not a list of known options, so a parameter this
    proxy has never heard of still keeps requests apart. The kind is in it because the API
    refuses a list that mixes strings and token arrays.
    """
    rest = {k: v for k, v in payload.items() if k != field}
    if rest.get("encoding_format") == "float":
        del rest["encoding_format"]  # the default: absent and "float" ask for the same thing
    return kind.encode() + b"\0" + orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)


def merge(payload: dict[str, Any], field: str, parts: Sequence[Inputs]) -> bytes:
    """One request body: `payload` with `field` replaced by every part's items, in order."""
    items = [item for part in parts for item in part.items]
    return orjson.dumps({**payload, field: items})


def split_embeddings(body: bytes, parts: Sequence[Inputs]) -> list[bytes]:
    """One embeddings answer per part: its own vectors, in its order, `index` from 0."""
    answer = load(body)
    rows = by_index(answer.get("data"), sum(len(p.items) for p in parts))
    usages = _usages(answer, [p.tokens for p in parts], None)
    out, start = [], 0
    for part, usage in zip(parts, usages, strict=True):
        mine = rows[start : start + len(part.items)]
        for i, row in enumerate(mine):
            row["index"] = i
        start += len(part.items)
        out.append(orjson.dumps(_with(answer, "data", mine, usage)))
    return out


def split_completions(body: bytes, parts: Sequence[Inputs], n: int) -> list[bytes]:
    """One completions answer per part; choice `index` is `prompt * n + j` both before and after.

    That `index // n` is the prompt's position is an inference from the API's behaviour, which
    the simulator reproduces and the tests check, including choices in shuffled order.
    """
    answer = load(body)
    choices = by_index(answer.get("choices"), n * sum(len(p.items) for p in parts))
    out: list[list[dict[str, Any]]] = []
    start = 0
    for part in parts:
        mine = choices[start * n : (start + len(part.items)) * n]
        for i, choice in enumerate(mine):
            choice["index"] = i
        start += len(part.items)
        out.append(mine)
    written = [sum(estimate(str(c.get("text") or "")) for c in mine) for mine in out]
    usages = _usages(answer, [p.tokens for p in parts], written)
    return [
        orjson.dumps(_with(answer, "choices", mine, usage))
        for mine, usage in zip(out, usages, strict=True)
    ]


def shares(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights`, in whole numbers that add up to `total`.

    Largest remainder; equal remainders go to the earlier part, so the split is deterministic.
    All-zero weights split evenly.
    """
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    whole = sum(weights)
    base = [total * w // whole for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


def split_usage(
    usage: dict[str, Any], prompt: Sequence[int], completion: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Per-part usage objects whose every integer adds up to the upstream's.

    `completion*` fields (and their details) are shared by `completion` weights, the rest by
    `prompt`; `total_tokens` stays `prompt + completion` per part whenever it was so overall.
    """
    out: list[dict[str, Any]] = [{} for _ in prompt]
    for name, value in usage.items():
        weights = completion if completion is not None and name.startswith("completion") else prompt
        for part, piece in zip(out, _split(value, weights), strict=True):
            part[name] = piece
    p, c, t = (usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    if isinstance(p, int) and isinstance(c, int) and t == p + c:
        for part in out:
            part["total_tokens"] = part["prompt_tokens"] + part["completion_tokens"]
    return out


def _split(value: Any, weights: Sequence[int]) -> list[Any]:
    if isinstance(value, bool) or value is None or isinstance(value, str | list):
        return [value] * len(weights)
    if isinstance(value, int):
        return shares(value, weights)
    if isinstance(value, float):  # a cost, say: proportional is the best there is
        whole = sum(weights) or 1
        return [value * w / whole for w in weights]
    if isinstance(value, dict):
        per: list[dict[str, Any]] = [{} for _ in weights]
        for name, inner in value.items():
            for part, piece in zip(per, _split(inner, weights), strict=True):
                part[name] = piece
        return per
    return [value] * len(weights)


def _usages(
    answer: dict[str, Any], prompt: list[int], completion: list[int] | None
) -> list[dict[str, Any] | None]:
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return [None] * len(prompt)
    return list(split_usage(usage, prompt, completion))


def _with(
    answer: dict[str, Any], field: str, rows: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    mine = {**answer, field: rows}
    if usage is not None:
        mine["usage"] = usage
    return mine


def load(body: bytes) -> dict[str, Any]:
    """An upstream answer as a JSON object, or `MalformedAnswerError`."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedAnswerError(f"not JSON: {e}") from None
    if not isinstance(answer, dict):
        raise MalformedAnswerError("not a JSON object")
    return answer


def by_index(rows: Any, expected: int) -> list[dict[str, Any]]:
    """Rows ordered by their `index`, which must cover 0..expected-1 exactly once."""
    if not isinstance(rows, list) or len(rows) != expected:
        got = len(rows) if isinstance(rows, list) else "no"
        raise MalformedAnswerError(f"{got} results for {expected} inputs")
    ordered: dict[int, dict[str, Any]] = {}
    for row in rows:
        index = row.get("index") if isinstance(row, dict) else None
        if not isinstance(index, int) or not 0 <= index < expected or index in ordered:
            raise MalformedAnswerError(f"bad or repeated index {index!r}")
        ordered[index] = row
    # `expected` distinct indices in range(expected): every position is there.
    return [ordered[i] for i in range(expected)]
