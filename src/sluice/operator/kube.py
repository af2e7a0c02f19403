"""A small async Kubernetes API client on aiohttp, signed in the way kopf signs in.

`login()` runs kopf's own public login functions in kopf's default order (the `kubernetes`
client's loaders when installed, else the in-cluster ServiceAccount, else the kubeconfig), so
the operator's calls (server-side apply, status patches, Secret checks, discovery) use the same
identity kopf watches with, and the image needs no second client library. A 401 signs in again
once (ServiceAccount tokens rotate). Only the verbs `reconcile` needs are here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from sluice.api import policies
from sluice.operator import metrics

FIELD_MANAGER = "sluice-operator"
TIMEOUT_SECONDS = 30.0

# Only the kinds the operator touches; a KeyError names a kind someone forgot to add.
PLURALS = {
    "ConfigMap": "configmaps",
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Pod": "pods",
    "Secret": "secrets",
    "Service": "services",
    "ServiceMonitor": "servicemonitors",
    **{kind.kind: kind.plural for kind in policies.KINDS.values()},
}


class ApiError(Exception):
    """A refusal from the API server, with its HTTP status and its `Status` reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """The REST path of a namespaced object (or of its collection when `name` is None)."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    collection = f"{prefix}/namespaces/{namespace}/{PLURALS[kind]}"
    return collection if name is None else f"{collection}/{name}"


def path_of(obj: Mapping[str, Any]) -> str:
    """The REST path of an object, from its apiVersion, kind, namespace and name."""
    meta = obj["metadata"]
    return path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])


def login(settings: kopf.OperatorSettings, logger: logging.Logger) -> kopf.ConnectionInfo:
    """Credentials as kopf's default login finds them; `kopf.LoginError` when there are none."""
    for attempt in (
        kopf.login_via_client,
        kopf.login_with_service_account,
        kopf.login_with_kubeconfig,
    ):
        info = attempt(settings=settings, logger=logger)
        if info is not None:
            return info
    raise kopf.LoginError("no credentials: neither in a cluster nor given a kubeconfig")


class Session:
    """One aiohttp session for one set of credentials."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
            headers={**info.as_http_headers(), "User-Agent": FIELD_MANAGER},
            proxy=info.proxy_url,
            trust_env=info.trust_env,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
        )

    async def close(self) -> None:
        await self.http.close()


class Client:
    """The operator's API calls. Create it inside the running loop (kopf's startup handler)."""

    def __init__(self, settings: kopf.OperatorSettings, logger: logging.Logger) -> None:
        self.settings = settings
        self.logger = logger
        self.session: Session | None = None
        self.signing_in = asyncio.Lock()

    def __repr__(self) -> str:
        server = self.session.server if self.session else "(not signed in)"
        return f"<kube.Client server={server} manager={FIELD_MANAGER}>"

    async def connect(self, refused: Session | None = None) -> Session:
        """The current session; a new one (signing in again) when there is none yet or the
        current one is `refused` (a 401). Concurrent callers sign in only once."""
        async with self.signing_in:
            if self.session is None or self.session is refused:
                info = await asyncio.to_thread(login, self.settings, self.logger)
                await self.close()
                self.session = Session(info)
            return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def request(
        self,
        method: str,
        url_path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One call; the decoded JSON answer, or `ApiError`. A 401 re-logs in and retries."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        refused: Session | None = None
        for attempt in range(2):
            session = await self.connect(refused)
            try:
                async with session.http.request(
                    method, session.server + url_path, data=data, headers=headers, params=params
                ) as reply:
                    payload = decode(await reply.read())
            except (aiohttp.ClientError, TimeoutError):
                metrics.api_errors.labels("0").inc()
                raise
            if reply.status == 401 and attempt == 0:
                refused = session
                continue
            if reply.status >= 400:
                if reply.status != 404:  # absence is an answer, not an error
                    metrics.api_errors.labels(str(reply.status)).inc()
                raise api_error(reply.status, payload)
            return payload
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def get(self, url_path: str) -> dict[str, Any] | None:
        """The object at `url_path`, or None when it does not exist."""
        try:
            result: dict[str, Any] = await self.request("GET", url_path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return result

    async def apply(self, obj: Mapping[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply under a field manager, forcing ownership of the fields it sets.

        Forcing is what reverts someone else's edit to a field we manage: without it their
        change would be a conflict we could only report.
        """
        params = {"fieldManager": manager, "force": "true"}
        result: dict[str, Any] = await self.request(
            "PATCH", path_of(obj), obj, content_type="application/apply-patch+yaml", params=params
        )
        return result

    async def create(self, obj: Mapping[str, Any]) -> bool:
        """Create the object unless one of its name exists; whether it was created."""
        meta = obj["metadata"]
        collection = path(obj["apiVersion"], obj["kind"], meta["namespace"])
        try:
            await self.request("POST", collection, obj, params={"fieldManager": FIELD_MANAGER})
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def delete(self, url_path: str, uid: str) -> None:
        """Delete the object if it is still the one with `uid`; gone already is fine."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        try:
            await self.request("DELETE", url_path, body)
        except ApiError as error:
            if error.status not in (404, 409):  # 409: a namesake replaced it meanwhile
                raise

    async def patch_status(self, url_path: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource (conditions are replaced as a whole)."""
        await self.request(
            "PATCH",
            url_path + "/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    async def list(self, url_path: str, label_selector: str) -> list[dict[str, Any]]:
        """The objects of a collection that match a label selector."""
        result = await self.request("GET", url_path, params={"labelSelector": label_selector})
        items: list[dict[str, Any]] = result["items"]
        return items

    async def served(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves this resource (discovery: every user may read it)."""
        answer = await self.get(f"/apis/{group_version}")
        return answer is not None and any(r["name"] == plural for r in answer["resources"])


def decode(raw: bytes) -> Any:
    """A JSON answer, or its text: some errors (a 404 for an API group) are plain text."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()


def api_error(status: int, payload: Any) -> ApiError:
    """An `ApiError` from a `Status` object, or from a bare status code."""
    if isinstance(payload, dict):
        return ApiError(status, payload.get("reason", ""), payload.get("message", ""))
    return ApiError(status, "", str(payload or ""))
