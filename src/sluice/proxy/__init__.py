"""The async proxy: an ASGI app in front of an OpenAI-compatible upstream.

`app` routes and accounts, `llm` decides what each `/v1/*` request does, `upstream` pools
connections and retries, `metrics` holds every metric, `server` runs it all under uvicorn.
"""

from sluice.proxy.app import ProxyApp
from sluice.proxy.server import serve

__all__ = ["ProxyApp", "serve"]
