"""The simulator's Files and Batch API as the official `openai` client sees them: every answer
parses into the SDK's types, and jobs complete, fail, expire and are cancelled as the real API's
do. (The simulator is the only simulated party; deferred mode's tests rely on this.)"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import openai
import orjson
import pytest

from tests.support.simulator import Simulator, bill

pytestmark = pytest.mark.integration


@pytest.fixture
def client(simulator: Simulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=simulator.url, api_key="sk-test", max_retries=0) as c:
        yield c


def jsonl(*bodies: dict[str, object], url: str = "/v1/chat/completions") -> io.BytesIO:
    lines = [
        orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body})
        for i, body in enumerate(bodies)
    ]
    return io.BytesIO(b"\n".join(lines) + b"\n")


def chat(content: str) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}


def lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, object]]:
    assert file_id is not None
    return [orjson.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_job_completes_with_an_output_line_per_item_and_an_error_line_per_refusal(
    simulator: Simulator, client: openai.OpenAI
) -> None:
    simulator.configure(batch_delay_ms=200)
    upload = client.files.create(
        file=("in.jsonl", jsonl(chat("a"), {"model": "gpt-4o-mini", "messages": []}, chat("b"))),
        purpose="batch",
    )
    assert upload.purpose == "batch"
    assert client.files.retrieve(upload.id).bytes == upload.bytes
    job = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert job.status == "validating"
    assert client.batches.retrieve(job.id).status == "in_progress"
    time.sleep(0.25)
    done = client.batches.retrieve(job.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.failed) == (3, 1)
    assert done.usage is not None
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens > 0
    outputs = lines(client, done.output_file_id)
    assert [line["custom_id"] for line in outputs] == ["r0", "r2"]
    response = outputs[0]["response"]
    assert isinstance(response, dict)
    assert response["status_code"] == 200
    completion = openai.types.chat.ChatCompletion.model_validate(response["body"])
    assert (completion.choices[0].message.content or "").startswith("Echo: a ")
    (refused,) = lines(client, done.error_file_id)
    assert refused["custom_id"] == "r1"
    assert refused["response"]["status_code"] == 400  # type: ignore[index]
    assert [b.id for b in client.batches.list()] == [job.id]
    assert client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)


def test_an_expired_job_answers_what_it_finished_and_a_cancelled_one_ends_cancelled(
    simulator: Simulator, client: openai.OpenAI
) -> None:
    simulator.configure(batch_delay_ms=400)
    simulator.expire_next_batch(after_ms=200)
    upload = client.files.create(
        file=("in.jsonl", jsonl(*(chat(str(i)) for i in range(4)))), purpose="batch"
    )
    job = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    time.sleep(0.25)
    expired = client.batches.retrieve(job.id)
    assert expired.status == "expired"
    assert expired.request_counts is not None
    assert expired.request_counts.completed == 2
    errors = lines(client, expired.error_file_id)
    assert [e["error"]["code"] for e in errors] == ["batch_expired"] * 2  # type: ignore[index]
    second = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.cancel(second.id).status == "cancelling"
    assert client.batches.retrieve(second.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(job.id)


def test_a_job_that_mixes_models_fails_validation_and_a_fail_fault_fails_the_next(
    simulator: Simulator, client: openai.OpenAI
) -> None:
    other = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    upload = client.files.create(file=("in.jsonl", jsonl(chat("a"), other)), purpose="batch")
    job = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = client.batches.retrieve(job.id)
    assert failed.status == "failed"
    assert failed.errors is not None
    assert failed.errors.data
    assert failed.errors.data[0].code == "mismatched_model"
    assert failed.output_file_id is None
    simulator.fail_next_batch()
    good = client.files.create(file=("in.jsonl", jsonl(chat("a"))), purpose="batch")
    job = client.batches.create(
        input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.retrieve(job.id).status == "failed"


def test_batch_items_are_billed_at_half_the_synchronous_price(
    simulator: Simulator, client: openai.OpenAI
) -> None:
    client.chat.completions.create(**chat("price me"))  # type: ignore[call-overload]
    upload = client.files.create(file=("in.jsonl", jsonl(chat("price me"))), purpose="batch")
    job = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.retrieve(job.id).status == "completed"
    charged = bill(simulator.stats)
    assert (charged.sync_calls, charged.batch_items) == (1, 1)
    assert charged.batch_dollars == pytest.approx(charged.sync_dollars / 2)
