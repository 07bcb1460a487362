"""The simulator's aiohttp application: routes, request checks and answers.

A request goes through three layers, each able to answer with an :class:`ApiError`
instead of going on:

1. ``_envelope`` (outermost middleware): gives every response an ``x-request-id`` and
   turns aiohttp's own errors (unknown route, body too large) into OpenAI error bodies.
2. ``_auth``: checks the bearer key. Rate limits or fault injection fit here as more
   middlewares of the same shape.
3. The handler: :func:`answer_chat` validates the body and returns either the completion
   body or an :class:`ApiError`; token counting lives in :mod:`batchib.simulator.text`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from batchib.simulator.settings import SimulatorSettings
from batchib.simulator.text import (
    count_tokens,
    prompt_text,
    prompt_tokens,
    reply_length,
    reply_words,
)

logger = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("settings", SimulatorSettings)
LATENCY_RNG_KEY = web.AppKey("latency_rng", random.Random)

ROLES = ("developer", "system", "user", "assistant", "tool")
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
MAX_N = 128
# OpenAI accepts up to 50 MB of images in one request; aiohttp's default limit is 1 MiB.
MAX_BODY_BYTES = 64 * 1024 * 1024
SYSTEM_FINGERPRINT = "fp_sim"
OWNED_BY = "batchib-simulator"


@dataclass(frozen=True)
class ApiError:
    """An answer in OpenAI's error shape: HTTP status plus the ``error`` object."""

    status: int
    message: str
    code: str | None
    param: str | None = None
    error_type: str = "invalid_request_error"
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a validated chat-completion request that shape the answer."""

    model: str
    messages: Sequence[Mapping[str, Any]]
    n: int
    max_completion_tokens: int | None


def json_response(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_response(error: ApiError) -> web.Response:
    """The HTTP response for ``error``."""
    return json_response(error.body(), status=error.status, headers=error.headers)


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `"n": true` is not a count.
    return isinstance(value, int) and not isinstance(value, bool)


def _type_error(param: str, expected: str) -> ApiError:
    return ApiError(400, f"Invalid type for '{param}': expected {expected}.", "invalid_type", param)


def _missing(param: str) -> ApiError:
    return ApiError(
        400,
        f"Missing required parameter: '{param}'.",
        "missing_required_parameter",
        param,
    )


def _check_int(
    payload: Mapping[str, Any], name: str, low: int, high: int | None
) -> ApiError | None:
    value = payload.get(name)
    if value is None:
        return None
    if not _is_int(value):
        return _type_error(name, "an integer")
    if value < low:
        return ApiError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            "integer_below_min_value",
            name,
        )
    if high is not None and value > high:
        return ApiError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            "integer_above_max_value",
            name,
        )
    return None


def _check_content(content: object, param: str) -> ApiError | None:
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return _type_error(param, "a string or an array of content parts")
    for j, part in enumerate(content):
        part_param = f"{param}[{j}]"
        if not isinstance(part, dict):
            return _type_error(part_param, "an object")
        kind = part.get("type")
        if kind not in PART_TYPES:
            return ApiError(
                400,
                f"Invalid value: {kind!r}. Supported values are: "
                + ", ".join(repr(t) for t in PART_TYPES)
                + ".",
                "invalid_value",
                f"{part_param}.type",
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            return _type_error(f"{part_param}.text", "a string")
    return None


def _check_message(message: object, i: int) -> ApiError | None:
    param = f"messages[{i}]"
    if not isinstance(message, dict):
        return _type_error(param, "an object")
    role = message.get("role")
    if role is None:
        return _missing(f"{param}.role")
    if role not in ROLES:
        return ApiError(
            400,
            f"Invalid value: {role!r}. Supported values are: "
            + ", ".join(repr(r) for r in ROLES)
            + ".",
            "invalid_value",
            f"{param}.role",
        )
    content = message.get("content")
    if content is None:
        # Only an assistant turn may come without content (e.g. when it made tool calls).
        if role != "assistant":
            return _missing(f"{param}.content")
    elif error := _check_content(content, f"{param}.content"):
        return error
    if "name" in message and not isinstance(message["name"], str):
        return _type_error(f"{param}.name", "a string")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        return _missing(f"{param}.tool_call_id")
    return None


def parse_chat_request(payload: object) -> ChatRequest | ApiError:
    """Check a decoded request body; the request, or the 400 error a gateway would send."""
    if not isinstance(payload, dict):
        return ApiError(400, "The request body must be a JSON object.", "invalid_type")
    model = payload.get("model")
    if model is None or model == "":
        return _missing("model")
    if not isinstance(model, str):
        return _type_error("model", "a string")
    messages = payload.get("messages")
    if messages is None:
        return _missing("messages")
    if not isinstance(messages, list):
        return _type_error("messages", "an array")
    if not messages:
        return ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "empty_array",
            "messages",
        )
    for i, message in enumerate(messages):
        if error := _check_message(message, i):
            return error
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return _type_error("stream", "a boolean")
    if stream:
        return ApiError(
            400,
            "Streaming is not supported by the batchib simulator: omit 'stream' or set it "
            "to false.",
            "unsupported_value",
            "stream",
        )
    for name, low, high in (
        ("n", 1, MAX_N),
        ("max_tokens", 1, None),
        ("max_completion_tokens", 1, None),
    ):
        if error := _check_int(payload, name, low, high):
            return error
    # max_tokens is deprecated in favour of max_completion_tokens, which wins if both are set.
    limit = payload.get("max_completion_tokens")
    if limit is None:
        limit = payload.get("max_tokens")
    return ChatRequest(
        model=model,
        messages=messages,
        n=payload.get("n") or 1,
        max_completion_tokens=limit,
    )


def complete(
    request: ChatRequest, served_model: str, settings: SimulatorSettings
) -> dict[str, Any]:
    """The ``chat.completion`` body for a valid request; usage matches the text exactly."""
    prompt = prompt_text(request.messages)
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for index in range(request.n):
        # Distinct for each (seed, index) pair since index < MAX_N: choices differ,
        # and each stays reproducible on its own.
        choice_seed = settings.seed * MAX_N + index
        n_words = reply_length(prompt, choice_seed, settings.default_completion_tokens)
        finish_reason = "stop"
        if request.max_completion_tokens is not None and request.max_completion_tokens < n_words:
            n_words = request.max_completion_tokens
            finish_reason = "length"
        content = " ".join(reply_words(prompt, n_words, choice_seed))
        completion_tokens += count_tokens(content)
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        )
    n_prompt = prompt_tokens(request.messages)
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served_model,
        "choices": choices,
        "usage": {
            "prompt_tokens": n_prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": n_prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def answer_chat(payload: object, settings: SimulatorSettings) -> dict[str, Any] | ApiError:
    """The completion body for a decoded request body, or the error to send instead."""
    request = parse_chat_request(payload)
    if isinstance(request, ApiError):
        return request
    served = settings.served_model(request.model)
    if served is None:
        return ApiError(
            404,
            f"The model `{request.model}` does not exist or you do not have access to it.",
            "model_not_found",
        )
    return complete(request, served, settings)


def draw_latency_s(settings: SimulatorSettings, rng: random.Random) -> float:
    """One simulated latency in seconds, uniform within the configured spread."""
    if settings.latency_ms == 0:
        return 0.0
    low = settings.latency_ms * (1 - settings.latency_spread)
    high = settings.latency_ms * (1 + settings.latency_spread)
    return rng.uniform(low, high) / 1000


async def _read_json(request: web.Request) -> object | ApiError:
    try:
        payload: object = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return ApiError(
            400,
            "We could not parse the JSON body of your request. The API expects a JSON "
            "payload, but what was sent was not valid JSON.",
            "invalid_json",
        )
    return payload


async def chat_completions(request: web.Request) -> web.Response:
    """``POST /v1/chat/completions``: a simulated completion after the simulated latency."""
    payload = await _read_json(request)
    if isinstance(payload, ApiError):
        return error_response(payload)
    settings = request.app[SETTINGS_KEY]
    answer = answer_chat(payload, settings)
    if isinstance(answer, ApiError):
        return error_response(answer)
    # Only a request that reaches the model pays the model's latency; rejects are fast.
    delay_s = draw_latency_s(settings, request.app[LATENCY_RNG_KEY])
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    return json_response(answer)


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: every alias and served name."""
    settings = request.app[SETTINGS_KEY]
    return json_response(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": OWNED_BY}
                for name in settings.model_ids()
            ],
        }
    )


def check_key(authorization: str | None, required_key: str | None) -> ApiError | None:
    """The 401 error for an ``Authorization`` header, or None if the key is accepted.

    The messages never contain the key: it would end up in the client's logs.
    """
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_api_key",
        )
    if required_key is not None and not hmac.compare_digest(
        key.encode("utf-8", "surrogatepass"), required_key.encode("utf-8", "surrogatepass")
    ):
        return ApiError(401, "Incorrect API key provided.", "invalid_api_key")
    return None


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    required_key = request.app[SETTINGS_KEY].require_key
    if error := check_key(request.headers.get("Authorization"), required_key):
        return error_response(error)
    return await handler(request)


def _http_error(request: web.Request, exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        message = f"Invalid URL ({request.method} {request.path})"
    elif exc.status == 405:
        message = f"Method not allowed ({request.method} {request.path})"
    else:
        message = exc.reason
    return ApiError(exc.status, message, None)


@web.middleware
async def _envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = f"req_{secrets.token_hex(16)}"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(_http_error(request, exc))
    except Exception:
        # The gateway boundary: a simulator bug still answers in OpenAI's shape, so the
        # client under test sees a 500 it can handle, and the traceback goes to the log.
        logger.exception("simulator failed on %s %s", request.method, request.path)
        response = error_response(
            ApiError(500, "The simulator failed on this request.", None, error_type="server_error")
        )
    response.headers["x-request-id"] = request_id
    return response


def create_app(settings: SimulatorSettings) -> web.Application:
    """The simulator as an aiohttp application (serve it with :func:`serve`)."""
    app = web.Application(middlewares=[_envelope, _auth], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS_KEY] = settings
    app[LATENCY_RNG_KEY] = random.Random(settings.seed)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_get(f"{prefix}/models", list_models)
    return app
