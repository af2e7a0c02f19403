"""The merged catalog: every server's tools, prompts and resources as one list, and the way back
from a merged name to its server. Pure: lists of dicts in, lists of dicts out.

Tools and prompts are renamed `<server>.<name>`. Server names are DNS labels (no dots), so the
first dot splits a qualified name unambiguously and two servers can never collide. The result
stays valid under the spec's tool-name rule (SEP-986: 1-128 of `A-Za-z0-9_.-`); an upstream
name that would break it is left out of the merged list (with a count the caller logs) rather
than passed on as a name no client can call. Resources keep their URIs (a URI names the thing,
and clients read it back as given); `owner_of_uri` finds the server that listed one.

Each server's list is cached as the server sent it (FACTS.md: the raw per-server result, not the
merge), so this module runs per request on cached data, and policy changes apply at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

NAME_RULE = re.compile(r"[A-Za-z0-9._-]{1,128}")

Item = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """One kind of list: the method that fetches it and the field that holds its items."""

    method: str
    field: str
    renamed: bool
    """Items are named `<server>.<name>` (tools, prompts); resources keep their URIs."""


TOOLS = Kind("tools/list", "tools", renamed=True)
PROMPTS = Kind("prompts/list", "prompts", renamed=True)
RESOURCES = Kind("resources/list", "resources", renamed=False)
TEMPLATES = Kind("resources/templates/list", "resourceTemplates", renamed=False)
KINDS = {kind.method: kind for kind in (TOOLS, PROMPTS, RESOURCES, TEMPLATES)}


def qualify(server: str, name: str) -> str | None:
    """`<server>.<name>`, or None when the result breaks the tool-name rule."""
    qualified = f"{server}.{name}"
    return qualified if name and NAME_RULE.fullmatch(qualified) else None


def split(qualified: str) -> tuple[str, str] | None:
    """(server, name) of a qualified name, or None when it has no server part."""
    server, dot, name = qualified.partition(".")
    return (server, name) if dot and server and name else None


def merge(kind: Kind, lists: Iterable[tuple[str, Sequence[Item]]]) -> tuple[list[Item], int]:
    """The items of every (server, items) pair in order, renamed where the kind says so; and how
    many were left out because no valid name could be made for them."""
    merged: list[Item] = []
    dropped = 0
    for server, items in lists:
        for item in items:
            if not kind.renamed:
                merged.append(item)
                continue
            name = item.get("name")
            qualified = qualify(server, name) if isinstance(name, str) else None
            if qualified is None:
                dropped += 1
                continue
            merged.append({**item, "name": qualified})
    return merged, dropped


def owner_of_uri(uri: str, lists: Mapping[str, Sequence[Item]]) -> str | None:
    """The server whose resources list names `uri` (the first one, in configured order)."""
    for server, items in lists.items():
        if any(item.get("uri") == uri for item in items):
            return server
    return None


def items_of(kind: Kind, result: Any, limit: int) -> list[Item]:
    """The items of one page of a list result, checked for shape; `ValueError` otherwise."""
    if not isinstance(result, dict):
        raise ValueError(f"{kind.method} answered with {type(result).__name__}, not an object")
    items = result.get(kind.field, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{kind.method}: `{kind.field}` is not a list of objects")
    if len(items) > limit:
        raise ValueError(f"{kind.method}: {len(items)} items, more than the limit of {limit}")
    return items


def freshness(policy_seconds: float, result: Mapping[str, Any]) -> float:
    """How long a list stays fresh: the policy's TTL, shortened by the server's `ttlMs`.

    SEP-2549's hint can shorten the TTL, never lengthen it. A `ttlMs` of 0 counts as no hint:
    it is what the SDK's servers send when their author set none (`CacheHint`'s default), and
    honouring it would mean never caching most servers; `list_changed` keeps such lists fresh.
    """
    hint = result.get("ttlMs")
    if type(hint) is int and hint > 0:
        return min(policy_seconds, hint / 1000)
    return policy_seconds


def is_private(result: Mapping[str, Any]) -> bool:
    """Did the server mark the list `cacheScope: private` (not to be shared across authorization
    contexts)? The session-based revisions have no such field: their lists are shared, unless the
    gateway fetched them with the caller's own credentials (`forwardCallerAuth`)."""
    return result.get("cacheScope") == "private"
