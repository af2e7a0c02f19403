"""The async proxy: an ASGI app in front of OpenAI-compatible upstreams and MCP servers.

`app` wires the packages together and routes; `server` runs it under uvicorn. One package per
concern, lowest first: `http` (the edge), `cache` and `upstream` (storage and reaching upstreams,
independent of each other), `llm` and `mcp` (the two products, independent of each other); then
`sampler`, `admin`, `app`, `server`. `metrics` holds every metric, below them all.
"""

from sluice.proxy.app import ProxyApp
from sluice.proxy.server import serve

__all__ = ["ProxyApp", "serve"]
