"""OpenAI-compatible upstream simulator: the stand-in for the paid LLM API.

Every integration test and benchmark of the Sluice proxy talks to this simulator instead of a real
provider. It is test and bench support, not product code. It aims to be

* faithful: the official ``openai`` client (sync and async, streaming or not) parses every answer;
  request validation, error bodies and the SSE framing follow the public API reference
  (:mod:`.protocol`, :mod:`.endpoints`);
* deterministic: embeddings depend only on (model, input, dimensions) and reply texts only on the
  request, so tests can predict every answer (:mod:`.answers`: :func:`embedding_vector`,
  :func:`count_tokens`);
* observable: every call is counted and logged (endpoint, inputs, Authorization header, body), so
  tests can assert how many upstream calls a batch of client requests produced and that no call
  mixed two tenants (:mod:`.state`);
* faithful in its Batch API too (:mod:`.batches`: files, jobs that complete, expire, fail or
  are cancelled, per-item errors), and billable (:mod:`.pricing`: what a call log would cost);
* controllable: latency, shuffled result order, error statuses, hangs, dropped connections and cut
  streams are injected through a Python API or over HTTP under ``/_sim/...`` (for benches that run
  in another process; :mod:`.server`, :mod:`.pipeline`);
* cheap: one aiohttp app, orjson, no per-request heavy work, so benches measure the proxy.

Ways to run it:

* ``Simulator``: ``url = await sim.start()`` / ``await sim.stop()`` on the caller's event loop;
* ``SimulatorThread`` (:mod:`.runner`): the same on a private event loop in a background thread
  (context manager), so sync tests, async tests and proxies in subprocesses can all reach it;
* the pytest plugin (:mod:`.plugin`, re-exported here): fixtures ``simulator`` (fresh state per
  test) and ``simulator_thread`` (one server per session, stable URL); enable with
  ``pytest_plugins = ["tests.support.simulator"]``;
* ``python -m tests.support.simulator --port 9000 --latency-ms 20`` for benches (prints the URL;
  :mod:`.cli`).
"""

from tests.support.simulator.answers import count_tokens, embedding_base64, embedding_vector
from tests.support.simulator.cli import main
from tests.support.simulator.plugin import simulator, simulator_thread
from tests.support.simulator.pricing import Bill, bill
from tests.support.simulator.runner import SimulatorThread
from tests.support.simulator.server import Simulator
from tests.support.simulator.state import (
    DEFAULT_MODELS,
    CallRecord,
    Fault,
    SimConfig,
    SimStats,
    canonical_endpoint,
)

__all__ = [
    "DEFAULT_MODELS",
    "Bill",
    "CallRecord",
    "Fault",
    "SimConfig",
    "SimStats",
    "Simulator",
    "SimulatorThread",
    "bill",
    "canonical_endpoint",
    "count_tokens",
    "embedding_base64",
    "embedding_vector",
    "main",
    "simulator",
    "simulator_thread",
]
