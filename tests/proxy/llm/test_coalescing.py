"""Merging callers' inputs into one request and dividing the answer: vectors, choices, usage."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from sluice.proxy.llm import coalescing


def inputs(*values: Any) -> list[coalescing.Inputs]:
    """Parsed inputs of the given values, each of which must be acceptable."""
    parsed = []
    for value in values:
        one = coalescing.parse(value)
        assert one is not None
        parsed.append(one)
    return parsed


# --- inputs and keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "items", "kind"),
    [
        pytest.param("hello", ["hello"], "text", id="a string"),
        pytest.param(["a", "b"], ["a", "b"], "text", id="a list of strings"),
        pytest.param([1, 2, 3], [[1, 2, 3]], "tokens", id="a token array"),
        pytest.param([[1], [2, 3]], [[1], [2, 3]], "tokens", id="a list of token arrays"),
    ],
)
def test_every_input_shape_of_the_api_parses_to_items(value: Any, items: Any, kind: str) -> None:
    inputs = coalescing.parse(value)
    assert inputs is not None
    assert (inputs.items, inputs.kind) == (items, kind)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="an empty string"),
        pytest.param(["a", ""], id="an empty string in a list"),
        pytest.param([], id="an empty list"),
        pytest.param(["a", 1], id="a mixed list"),
        pytest.param([[1], []], id="an empty token array"),
        pytest.param(None, id="nothing"),
        pytest.param({"text": "a"}, id="an object"),
    ],
)
def test_inputs_the_api_refuses_are_not_coalesced(value: Any) -> None:
    assert coalescing.parse(value) is None


def test_token_estimates_are_exact_for_token_arrays_and_rough_for_text() -> None:
    assert [i.tokens for i in inputs([[1, 2], [3]], "a" * 30, "a")] == [3, 10, 1]


def test_the_group_key_holds_every_option_but_the_input() -> None:
    base = {"model": "m", "input": "a", "dimensions": 8}
    key = coalescing.group_key(base, "input", "text")
    assert coalescing.group_key({**base, "input": "other"}, "input", "text") == key
    assert (
        coalescing.group_key({"dimensions": 8, "input": "b", "model": "m"}, "input", "text") == key
    )
    assert coalescing.group_key({**base, "dimensions": 9}, "input", "text") != key
    assert coalescing.group_key({**base, "user": "u"}, "input", "text") != key
    assert coalescing.group_key({**base, "unheard_of": 1}, "input", "text") != key
    assert coalescing.group_key(base, "input", "tokens") != key


def test_float_encoding_is_the_default_and_base64_is_apart() -> None:
    base = {"model": "m", "input": "a"}
    plain = coalescing.group_key(base, "input", "text")
    assert coalescing.group_key({**base, "encoding_format": "float"}, "input", "text") == plain
    assert coalescing.group_key({**base, "encoding_format": "base64"}, "input", "text") != plain


def test_merge_concatenates_every_callers_items_in_order() -> None:
    parts = inputs("a", ["b", "c"], "d")
    body = coalescing.merge({"model": "m", "input": "a", "dimensions": 4}, "input", parts)
    assert orjson.loads(body) == {"model": "m", "input": ["a", "b", "c", "d"], "dimensions": 4}


# --- dividing embeddings ----------------------------------------------------------------------


def embeddings_answer(texts: list[str], usage: int, shuffle: bool = False) -> bytes:
    data = [
        {"object": "embedding", "index": i, "embedding": [float(i), 0.5]}
        for i, _ in enumerate(texts)
    ]
    if shuffle:
        random.Random(7).shuffle(data)
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": usage, "total_tokens": usage},
        }
    )


def test_each_caller_gets_its_own_vectors_in_its_own_order_indexed_from_zero() -> None:
    parts = inputs("a", ["b", "c", "d"], "e", ["f", "g"])
    texts = list("abcdefg")
    bodies = coalescing.split_embeddings(embeddings_answer(texts, 19, shuffle=True), parts)
    answers = [orjson.loads(b) for b in bodies]
    assert [[row["embedding"][0] for row in a["data"]] for a in answers] == [
        [0.0],
        [1.0, 2.0, 3.0],
        [4.0],
        [5.0, 6.0],
    ]
    assert [[row["index"] for row in a["data"]] for a in answers] == [[0], [0, 1, 2], [0], [0, 1]]
    assert all(a["model"] == "text-embedding-3-small" and a["object"] == "list" for a in answers)
    assert sum(a["usage"]["prompt_tokens"] for a in answers) == 19
    assert sum(a["usage"]["total_tokens"] for a in answers) == 19


def test_base64_vectors_are_passed_through_untouched() -> None:
    answer = orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": 1, "embedding": "AAAAPw=="},
                {"object": "embedding", "index": 0, "embedding": "AACAPw=="},
            ],
            "model": "m",
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        }
    )
    parts = inputs("x", "y")
    first, second = (orjson.loads(b) for b in coalescing.split_embeddings(answer, parts))
    assert first["data"] == [{"object": "embedding", "index": 0, "embedding": "AACAPw=="}]
    assert second["data"] == [{"object": "embedding", "index": 0, "embedding": "AAAAPw=="}]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([{"index": 0}], id="too few results"),
        pytest.param([{"index": 0}, {"index": 0}], id="a repeated index"),
        pytest.param([{"index": 0}, {"index": 5}], id="an index out of range"),
        pytest.param([{"index": 0}, {"no": "index"}], id="a result without an index"),
        pytest.param(None, id="no data"),
    ],
)
def test_an_answer_that_cannot_be_divided_is_refused(data: Any) -> None:
    parts = inputs("x", "y")
    with pytest.raises(coalescing.MalformedAnswerError):
        coalescing.split_embeddings(orjson.dumps({"data": data}), parts)


def test_an_answer_without_usage_is_divided_without_usage() -> None:
    parts = inputs("x", "y")
    answer = orjson.dumps({"data": [{"index": 1}, {"index": 0}]})
    assert [orjson.loads(b) for b in coalescing.split_embeddings(answer, parts)] == [
        {"data": [{"index": 0}]},
        {"data": [{"index": 0}]},
    ]


# --- dividing completions ---------------------------------------------------------------------


def completions_answer(prompts: int, n: int) -> bytes:
    choices = [
        {"text": f"p{i // n}c{i % n}", "index": i, "logprobs": None, "finish_reason": "stop"}
        for i in range(prompts * n)
    ]
    random.Random(3).shuffle(choices)
    return orjson.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "gpt-3.5-turbo-instruct",
            "choices": choices,
            "usage": {"prompt_tokens": 17, "completion_tokens": 23, "total_tokens": 40},
        }
    )


def test_completion_choices_with_n_above_one_go_back_to_their_prompts() -> None:
    parts = inputs("first", ["second", "third"], "fourth")
    bodies = coalescing.split_completions(completions_answer(4, 3), parts, n=3)
    answers = [orjson.loads(b) for b in bodies]
    texts = [[c["text"] for c in a["choices"]] for a in answers]
    assert texts == [
        ["p0c0", "p0c1", "p0c2"],
        ["p1c0", "p1c1", "p1c2", "p2c0", "p2c1", "p2c2"],
        ["p3c0", "p3c1", "p3c2"],
    ]
    assert [[c["index"] for c in a["choices"]] for a in answers] == [
        [0, 1, 2],
        [0, 1, 2, 3, 4, 5],
        [0, 1, 2],
    ]
    assert all(a["id"] == "cmpl-1" and a["model"] == "gpt-3.5-turbo-instruct" for a in answers)
    usages = [a["usage"] for a in answers]
    assert sum(u["prompt_tokens"] for u in usages) == 17
    assert sum(u["completion_tokens"] for u in usages) == 23
    assert sum(u["total_tokens"] for u in usages) == 40
    assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in usages)


def test_completions_with_too_few_choices_for_n_are_refused() -> None:
    parts = inputs("a", "b")
    with pytest.raises(coalescing.MalformedAnswerError):
        coalescing.split_completions(completions_answer(2, 1), parts, n=2)


# --- usage shares -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        pytest.param(10, [1, 1], [5, 5], id="even"),
        pytest.param(10, [1, 1, 1], [4, 3, 3], id="ties go to the earlier part"),
        pytest.param(7, [1, 2, 4], [1, 2, 4], id="proportional"),
        pytest.param(5, [0, 0], [3, 2], id="no weights: even"),
        pytest.param(0, [3, 5], [0, 0], id="nothing to share"),
        pytest.param(3, [1, 100, 1], [0, 3, 0], id="largest remainder"),
    ],
)
def test_shares_are_whole_and_proportional(
    total: int, weights: list[int], expected: list[int]
) -> None:
    assert coalescing.shares(total, weights) == expected


def test_shares_always_add_up_exactly() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        weights = [rng.randrange(0, 50) for _ in range(rng.randrange(1, 40))]
        total = rng.randrange(0, 100_000)
        parts = coalescing.shares(total, weights)
        assert sum(parts) == total
        assert all(p >= 0 for p in parts)


def test_nested_usage_details_are_shared_by_the_matching_weights() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 6,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    first, second = coalescing.split_usage(usage, [1, 1], [0, 1])
    assert first == {
        "prompt_tokens": 5,
        "completion_tokens": 0,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert second["completion_tokens"] == 6
    assert second["completion_tokens_details"] == {"reasoning_tokens": 2}
    assert second["total_tokens"] == 11
