"""Deferred mode: ordinary requests answered through the provider's Batch API, at its price.

A request opts in (`asks`: `x-sluice-deferred`, `Prefer: respond-async`, or the route's
`llm.deferred.enabled`) and becomes an `records.Item` in a `jobstore` (memory, or Redis so that
it survives restarts and any replica can answer its job); the `worker` gathers the items of a
group (endpoint, model, payer) into Batch API jobs (`provider`), polls them, and answers each
item by its `custom_id`, or sends it synchronously when its deadline nears (`estimator` says
when). `deferral.Deferral` is what the LLM routes call, and serves `/v1/sluice/jobs/{id}`.
"""

from sluice.proxy.llm.deferred.deferral import JOBS_PREFIX, Deferral

__all__ = ["JOBS_PREFIX", "Deferral"]
