"""The simulator's aiohttp application: routes, the gateway's checks, and answers.

A request goes through three layers, each able to answer early:

1. ``_envelope`` (outermost middleware): gives every response an ``x-request-id``, turns
   aiohttp's own errors (unknown route, body too large) into OpenAI error bodies, and
   writes the request log.
2. ``_auth``: checks the bearer key.
3. The handler. For a completion, in the order a gateway applies them: the
   ``x-batchib-fault`` header is checked, then whether the key was revoked, the body
   (400, unknown model 404), the key's rate limits (429), the fault of this attempt, and
   finally the completion. Every answer once the key is accepted carries the key's
   ``x-ratelimit-*`` headers.

The pieces live in their own modules: body checks in :mod:`~batchib.simulator.validation`,
the reply in :mod:`~batchib.simulator.completion`, buckets in
:mod:`~batchib.simulator.ratelimit`, faults in :mod:`~batchib.simulator.faults`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from batchib.simulator.auth import bearer_key, check_key, key_hash
from batchib.simulator.completion import complete, draw_latency_s
from batchib.simulator.errors import ApiError, error_response, json_response
from batchib.simulator.faults import FAULT_ERRORS, FAULT_HEADER, Fault, FaultInjector, forced_fault
from batchib.simulator.ratelimit import RateLimiter, upfront_tokens
from batchib.simulator.ratelimit_http import rate_limit_error, rate_limit_headers
from batchib.simulator.requestlog import LogEntry, RequestLog
from batchib.simulator.settings import SimulatorSettings
from batchib.simulator.text import prompt_tokens
from batchib.simulator.validation import parse_chat_request, unknown_model
from batchib.tokens import estimate_prompt_tokens, tokenizer_available

logger = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("settings", SimulatorSettings)
LATENCY_RNG_KEY = web.AppKey("latency_rng", random.Random)
LIMITER_KEY = web.AppKey("rate_limiter", RateLimiter)
FAULTS_KEY = web.AppKey("faults", FaultInjector)
# Present only when the settings name a log file.
REQUEST_LOG_KEY = web.AppKey("request_log", RequestLog)


@dataclass(slots=True)
class Attempt:
    """What the gateway made of one completions request: the request log's fields."""

    received_at: float
    key_hash: str | None = None
    body_sha256: str | None = None
    model: str | None = None
    fault: Fault | None = None
    tokens_charged: int = 0


ATTEMPT_KEY = web.RequestKey("attempt", Attempt)

COMPLETIONS_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
# OpenAI accepts up to 50 MB of images in one request; aiohttp's default limit is 1 MiB.
MAX_BODY_BYTES = 64 * 1024 * 1024
OWNED_BY = "batchib-simulator"

_INVALID_JSON = ApiError(
    400,
    "We could not parse the JSON body of your request. The API expects a JSON "
    "payload, but what was sent was not valid JSON.",
    "invalid_json",
)


async def _read_json(request: web.Request) -> object | ApiError:
    try:
        payload: object = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _INVALID_JSON
    return payload


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``: a simulated completion, or the gateway's refusal."""
    attempt = request[ATTEMPT_KEY]
    # _auth has accepted the key, so there is one.
    assert attempt.key_hash is not None
    response = await _answer(request, attempt, attempt.key_hash)
    limiter = request.app[LIMITER_KEY]
    if limiter.enabled and request.app[SETTINGS_KEY].rate_headers:
        response.headers.update(rate_limit_headers(limiter.state(attempt.key_hash)))
    return response


async def _answer(request: web.Request, attempt: Attempt, key: str) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS_KEY]
    faults = app[FAULTS_KEY]
    limiter = app[LIMITER_KEY]

    forced = forced_fault(request.headers.get(FAULT_HEADER))
    if isinstance(forced, ApiError):
        return error_response(forced)
    if faults.is_revoked(key):
        attempt.fault = Fault.KEY_REVOKED
        return error_response(FAULT_ERRORS[Fault.KEY_REVOKED])

    payload = await _read_json(request)
    if isinstance(payload, ApiError):
        return error_response(payload)
    if isinstance(payload, dict) and isinstance(payload.get("model"), str):
        attempt.model = payload["model"]
    chat = parse_chat_request(payload)
    if isinstance(chat, ApiError):
        return error_response(chat)
    served = settings.served_model(chat.model)
    if served is None:
        return error_response(unknown_model(chat.model))

    n_prompt = _prompt_tokens(settings, payload, chat.messages)
    upfront = upfront_tokens(n_prompt, chat.max_completion_tokens, chat.n)
    if refusal := limiter.admit(key, upfront):
        return error_response(rate_limit_error(refusal))
    # From here the gateway has taken the request: it is charged whatever happens next.
    attempt.tokens_charged = upfront
    faults.accept(key)

    fault = attempt.fault = faults.draw(forced)
    if fault is Fault.DROP:
        if request.transport is not None:
            request.transport.close()
        # aiohttp fails to write this to the closed transport and sends nothing.
        return web.Response()
    if fault is not None and (error := FAULT_ERRORS.get(fault)) is not None:
        return error_response(error)
    if fault is Fault.HANG:
        await asyncio.sleep(settings.faults.hang_s)

    answer = complete(chat, served, settings, n_prompt)
    # Only a request that reaches the model pays the model's latency; rejects are fast.
    delay_s = draw_latency_s(settings, app[LATENCY_RNG_KEY])
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    if chat.max_completion_tokens is None:
        completion_tokens: int = answer["usage"]["completion_tokens"]
        limiter.charge_tokens(key, completion_tokens)
        attempt.tokens_charged += completion_tokens
    body = orjson.dumps(answer)
    if fault is Fault.TRUNCATE:
        body = body[: len(body) // 2]
    return web.Response(body=body, content_type="application/json")


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


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = bearer_key(request.headers.get("Authorization"))
    attempt = request.get(ATTEMPT_KEY)
    if attempt is not None and key is not None:
        attempt.key_hash = key_hash(key)
    if error := check_key(key, request.app[SETTINGS_KEY].require_key):
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
    request_log = request.app.get(REQUEST_LOG_KEY)
    attempt: Attempt | None = None
    if request.path in COMPLETIONS_PATHS:
        attempt = Attempt(received_at=time.time())
        request[ATTEMPT_KEY] = attempt
    response: web.StreamResponse | None = None
    try:
        if attempt is not None and request_log is not None:
            # Read before anything can refuse the request, so every line has its hash.
            attempt.body_sha256 = hashlib.sha256(await request.read()).hexdigest()
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
    finally:
        # Also when the handler is cancelled (a server that cancels handlers once their
        # client leaves): the line then records a request that got no answer.
        if attempt is not None and request_log is not None:
            request_log.write(_log_entry(request, attempt, response, request_id))
    response.headers["x-request-id"] = request_id
    return response


def _log_entry(
    request: web.Request,
    attempt: Attempt,
    response: web.StreamResponse | None,
    request_id: str,
) -> LogEntry:
    # A dropped connection, or a client that left while its request hung, gets nothing.
    transport = request.transport
    status: int | None = None
    if response is not None and transport is not None and not transport.is_closing():
        status = response.status
    return LogEntry(
        t=attempt.received_at,
        key=attempt.key_hash,
        body_sha256=attempt.body_sha256,
        status=status,
        fault=attempt.fault,
        tokens_charged=attempt.tokens_charged,
        model=attempt.model,
        request_id=request_id if status is not None else None,
    )


def _request_log_context(
    request_log: RequestLog,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def open_for_app_lifetime(app: web.Application) -> AsyncIterator[None]:
        request_log.open()
        try:
            yield
        finally:
            request_log.close()

    return open_for_app_lifetime


async def _load_tokenizer(app: web.Application) -> None:
    # Loading takes ~0.6 s: before the first request, not inside its latency.
    await asyncio.to_thread(tokenizer_available)


def _prompt_tokens(
    settings: SimulatorSettings, payload: Any, messages: Sequence[Mapping[str, object]]
) -> int:
    """Like a real gateway, count with the model's real tokenizer when it is installed
    (so offline estimates can be checked against it); else the simulator's word rule."""
    if settings.tokenizer == "real" and tokenizer_available():
        return estimate_prompt_tokens(payload)
    return prompt_tokens(messages)


def create_app(
    settings: SimulatorSettings, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """The simulator as an aiohttp application (serve it with :func:`serve`).

    ``clock`` is the monotonic clock the rate limits refill by; tests pass a fake one.
    """
    app = web.Application(middlewares=[_envelope, _auth], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS_KEY] = settings
    app[LATENCY_RNG_KEY] = random.Random(settings.seed)
    app[LIMITER_KEY] = RateLimiter(settings.rpm, settings.tpm, settings.burst_s, clock)
    app[FAULTS_KEY] = FaultInjector(settings.faults, settings.seed)
    if settings.log_path is not None:
        request_log = RequestLog(settings.log_path)
        app[REQUEST_LOG_KEY] = request_log
        app.cleanup_ctx.append(_request_log_context(request_log))
    if settings.tokenizer == "real":
        app.on_startup.append(_load_tokenizer)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_get(f"{prefix}/models", list_models)
    return app
