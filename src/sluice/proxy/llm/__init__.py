"""The OpenAI-compatible half: routes (`routes`) over the response caches (`responses`,
`embeddings`, with `cachekeys` and `replay`), the dispatcher (`dispatching`: `batching` over the
pure `batchqueue`, `coalescing`) and the upstream client (`client`, counting `usage`)."""
