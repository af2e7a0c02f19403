"""The HTTP edge: ASGI plumbing (`asgi`), the errors the proxy answers itself (`errors`), who is
asking (`callers`), and reading server-sent events as they pass (`sse`)."""
