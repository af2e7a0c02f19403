"""The contract: pydantic models of the proxy config and the CRD specs, and nothing else.

Everything that crosses a boundary (YAML config, CRD schema, ConfigMap) is generated from or
validated by these models; `sluice.operator` and `sluice.proxy` build on them.
"""

from sluice.api.base import Model, SecretKeyRef
from sluice.api.config import (
    Admin,
    CacheConfig,
    ConfigError,
    Listen,
    LLMConfig,
    MCPConfig,
    MCPServerConfig,
    ProxyConfig,
    RedisConfig,
    UpstreamConfig,
)
from sluice.api.llm import (
    BatchedEndpoints,
    BatchingSettings,
    CacheSettings,
    CacheTtls,
    HealthSettings,
    LLMSettings,
    PoolSettings,
    RedisSettings,
    RetrySettings,
    UpstreamSettings,
)
from sluice.api.mcp import MCPSettings, ToolResultRule
from sluice.api.policies import (
    CacheSpec,
    Condition,
    LLMBatchPolicy,
    LLMBatchPolicySpec,
    MCPServerSpec,
    MetricsSpec,
    Policy,
    PolicyStatus,
    ProxySpec,
    RedisSpec,
    SecretRef,
    ToolCachePolicy,
    ToolCachePolicySpec,
    UpstreamSpec,
)

__all__ = [
    "Admin",
    "BatchedEndpoints",
    "BatchingSettings",
    "CacheConfig",
    "CacheSettings",
    "CacheSpec",
    "CacheTtls",
    "Condition",
    "ConfigError",
    "HealthSettings",
    "LLMBatchPolicy",
    "LLMBatchPolicySpec",
    "LLMConfig",
    "LLMSettings",
    "Listen",
    "MCPConfig",
    "MCPServerConfig",
    "MCPServerSpec",
    "MCPSettings",
    "MetricsSpec",
    "Model",
    "Policy",
    "PolicyStatus",
    "PoolSettings",
    "ProxyConfig",
    "ProxySpec",
    "RedisConfig",
    "RedisSettings",
    "RedisSpec",
    "RetrySettings",
    "SecretKeyRef",
    "SecretRef",
    "ToolCachePolicy",
    "ToolCachePolicySpec",
    "ToolResultRule",
    "UpstreamConfig",
    "UpstreamSettings",
    "UpstreamSpec",
]
