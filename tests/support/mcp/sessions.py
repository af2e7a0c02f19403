"""Making a session-keeping MCP server forget its sessions, as a restarted replica would.

:class:`SessionAmnesia` sits in front of an ``MCPServer`` app and remembers every
``Mcp-Session-Id`` the server hands out. After :meth:`SessionAmnesia.forget` a request that
carries one of those ids reaches the server with the id replaced by one it never issued, so
the SDK's own session manager answers it exactly as it answers a dead session (404,
"Session not found"), and a client that initialises again gets a new, working session.
"""

from __future__ import annotations

from tests.support.mcp.control import App, Message, Receive, Scope, Send

SESSION_HEADER = b"mcp-session-id"


class SessionAmnesia:
    """ASGI wrapper: records issued session ids and can make the server forget them all."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.issued: set[bytes] = set()
        self.forgotten: set[bytes] = set()

    def forget(self) -> int:
        """Forget every session issued so far; returns how many."""
        self.forgotten |= self.issued
        return len(self.issued)

    def reset(self) -> None:
        self.forgotten.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [
            (
                key,
                b"forgotten-" + value
                if key == SESSION_HEADER and value in self.forgotten
                else value,
            )
            for key, value in scope["headers"]
        ]

        async def remember(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", []):
                    if key.lower() == SESSION_HEADER:
                        self.issued.add(value)
            await send(message)

        await self.app({**scope, "headers": headers}, receive, remember)

    def __repr__(self) -> str:
        return f"<SessionAmnesia issued={len(self.issued)} forgotten={len(self.forgotten)}>"
