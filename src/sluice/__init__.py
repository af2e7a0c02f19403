"""Sluice: caching and batching proxies for LLM APIs and MCP servers, run by a Kubernetes operator.

`sluice.api` is the contract (config and CRD models); `sluice.proxy` and `sluice.operator`
build on it.
"""
