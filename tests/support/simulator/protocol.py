"""The OpenAI HTTP protocol as the simulator speaks it: request checks, errors, JSON and SSE.

Validation raises :class:`ApiError`, which the pipeline (:mod:`.pipeline`) renders with
:func:`error_response` into the body and status the public API reference documents, so the
official ``openai`` client raises the same exception it would against the real service. The
``/v1`` handlers in :mod:`.endpoints` call the checks; :mod:`.server`'s control API reuses
:func:`parse_body` and :func:`json_response`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from tests.support.simulator import answers, state

SSE_DONE = b"data: [DONE]\n\n"
INVALID_JSON = object()  # sentinel: the body was not valid JSON

_DEFAULT_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


class ApiError(Exception):
    """An OpenAI-style error answer, raised from validation code and rendered by the pipeline."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def fault_error(fault: state.Fault) -> ApiError:
    """The error a ``status`` fault answers, typed like the real API's error for that status."""
    default_type, default_code = _DEFAULT_ERROR_TYPES.get(
        fault.status, ("server_error" if fault.status >= 500 else "invalid_request_error", None)
    )
    headers = dict(fault.headers)
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    return ApiError(
        fault.status,
        fault.message or f"Simulated error {fault.status} (injected by the test).",
        error_type=fault.error_type or default_type,
        code=fault.code if fault.code is not None else default_code,
        headers=headers,
    )


def invalid_input(detail: str = "") -> ApiError:
    # The real API's wording for schema failures on `input`.
    return ApiError(
        400,
        "'$.input' is invalid. Please check the API reference: "
        "https://platform.openai.com/docs/api-reference." + (f" ({detail})" if detail else ""),
        param="input",
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


# ---- answers on the wire ------------------------------------------------------------------


def json_response(
    payload: Any,
    *,
    status: int = 200,
    request_id: str = "",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    all_headers = {"Content-Type": "application/json"}
    if request_id:
        all_headers["x-request-id"] = request_id
    if headers:
        all_headers.update(headers)
    return web.Response(body=orjson.dumps(payload), status=status, headers=all_headers)


def error_response(err: ApiError, request_id: str = "") -> web.Response:
    body = {
        "error": {
            "message": err.message,
            "type": err.error_type,
            "param": err.param,
            "code": err.code,
        }
    }
    return json_response(body, status=err.status, request_id=request_id, headers=err.headers)


def sse(payload: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying ``payload`` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# ---- reading and checking requests --------------------------------------------------------


def parse_body(raw: bytes) -> Any:
    """The JSON body; None when empty, :data:`INVALID_JSON` when it does not parse."""
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return INVALID_JSON


def check_auth(request: web.BaseRequest, config: state.SimConfig) -> None:
    if not config.require_auth:
        return
    header = request.headers.get("Authorization", "")
    key = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not key:
        raise ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if config.api_keys and key not in config.api_keys:
        masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:]
        raise ApiError(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def require_model(body: Mapping[str, Any], config: state.SimConfig) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter")
    if config.strict_models and model not in config.models:
        raise model_not_found(model)
    return model


def check_token_limits(tokens: Sequence[int], config: state.SimConfig) -> None:
    longest = max(tokens)
    if longest > config.max_input_tokens:
        raise ApiError(
            400,
            f"This model's maximum context length is {config.max_input_tokens} tokens, however you "
            f"requested {longest} tokens ({longest} in your prompt; 0 for the completion). "
            "Please reduce your prompt; or completion length.",
            code="context_length_exceeded",
        )
    total = sum(tokens)
    if total > config.max_request_tokens:
        raise ApiError(
            400,
            f"Requested {total} tokens, max {config.max_request_tokens} tokens per request",
            code="max_tokens_per_request",
        )


def positive_int(body: Mapping[str, Any], name: str, default: int | None, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ApiError(
            400, f"Invalid '{name}': expected an integer between 1 and {high}.", param=name
        )
    return value


def _is_token(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def input_items(value: object) -> list[answers.Item] | None:
    """Normalise an embeddings ``input`` / completions ``prompt`` to a list of items.

    Accepts a string, a list of strings, a token array or a list of token arrays; None when the
    shape matches none of these (mixed lists, floats, objects).
    """
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return None
    if not value:
        return []
    if all(isinstance(x, str) for x in value):
        return list(value)
    if all(_is_token(x) for x in value):
        return [list(value)]
    if all(isinstance(x, list) and all(_is_token(t) for t in x) for x in value):
        return list(value)
    return None


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text parts carry words
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def stream_usage_flag(body: Mapping[str, Any], stream: bool) -> bool:
    """Whether a stream must end with a usage chunk; 400 for ``stream_options`` misuse."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise ApiError(
            400, "Invalid type for 'stream_options': expected an object.", param="stream_options"
        )
    return options.get("include_usage") is True
