"""Pure answers about live objects: whose they are, whether they drifted, who owns a field.

`reconcile` asks these before and after applying: an object of the policy's name that the
policy does not control is someone else's and is never taken over (`controlled_by`); a child
whose event shows something other than what the operator last applied has drifted and needs a
reconcile, while a status-only change needs none (`fingerprint`); and a Deployment's replicas
are handed to an autoscaler only once the operator's field manager no longer holds them
(`manages`). No kopf and no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# What the operator sets on its children; `status` and the API server's bookkeeping are not.
DESIRED_PARTS = ("spec", "data", "immutable", "type")
DESIRED_METADATA = ("labels", "ownerReferences")


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether the object's controlling owner is the policy object with this uid."""
    owners = obj.get("metadata", {}).get("ownerReferences", [])
    return any(o.get("uid") == uid and o.get("controller") for o in owners)


def fingerprint(obj: Mapping[str, Any]) -> str:
    """A digest of the parts of a live object the operator sets: equal while nobody edits it.

    Taken of what the API server answered to an apply (defaults filled in) and of what a
    watch event carries, so the two compare; a status update leaves it unchanged.
    """
    meta = obj.get("metadata", {})
    parts = {key: obj.get(key) for key in DESIRED_PARTS}
    parts.update({key: meta.get(key) for key in DESIRED_METADATA})
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def manages(obj: Mapping[str, Any], manager: str, *field_path: str) -> bool:
    """Whether a field manager's applied configuration holds the field (`spec`, `replicas`)."""
    for entry in obj.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        fields: Mapping[str, Any] = entry.get("fieldsV1") or {}
        for name in field_path:
            fields = fields.get(f"f:{name}")  # type: ignore[assignment]
            if fields is None:
                break
        else:
            return True
    return False
