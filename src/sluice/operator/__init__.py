"""The Kubernetes operator: policies in, proxy Deployments out.

`handlers` (kopf, thin) call `reconcile`, which renders the config (`proxyconfig`), builds the
objects (`resources`), checks who owns what and what drifted (`ownership`), applies them
through `kube`, computes the status (`status`) and remembers each policy between reconciles
(`tracking`: retries with backoff, the Events posted); `podmetrics` reads the proxies' own
metrics into the status (hit ratio, MCP servers, tools). All but `handlers`, `reconcile`,
`kube` and `podmetrics` are pure. `runner` starts kopf with `options`; `metrics` holds the
operator's own Prometheus metrics.
"""
