"""The Kubernetes operator: policies in, proxy Deployments out.

`handlers` (kopf, thin) call `reconcile`, which renders the config (`proxyconfig`), builds the
objects (`resources`), applies them through `kube` and computes the status (`status`);
`podmetrics` reads the proxies' own metrics into the status (hit ratio, MCP servers, tools).
All but `handlers`, `reconcile`, `kube` and `podmetrics` are pure. `runner` starts kopf with
`options`; `metrics` holds the operator's own Prometheus metrics.
"""
