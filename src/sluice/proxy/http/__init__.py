"""The HTTP edge: ASGI plumbing (`asgi`), the errors the proxy answers itself (`errors`), who is
asking (`callers`), which paths may pass (`paths`), and reading server-sent events as they pass
(`sse`)."""
