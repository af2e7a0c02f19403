"""Reaching upstreams, shared by the LLM client and the MCP gateway: pooled client sessions
(`sessions`) and endpoint health, backoff and retry decisions (`endpoints`)."""
