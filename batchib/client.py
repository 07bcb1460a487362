"""The one place that talks HTTP: send one chat-completion request, classify the answer.

aiohttp's exceptions are translated here and nowhere else. Classification follows the
official SDK's rule (PROTOCOL.md) with one addition for batches: answers that mean every
further request would fail the same way (401, 403, out of credit) stop the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from batchib.cacerts import wait_until_loaded
from batchib.config import RunSettings
from batchib.ratelimit_headers import parse_rate_headers
from batchib.reply import Reply, Verdict
from batchib.retry import MAX_RETRY_AFTER_S, retry_after_s
from batchib.version import __version__

USER_AGENT = f"batchib/{__version__}"
RETRYABLE_STATUSES = frozenset({408, 409, 429})
# Bad key, key not allowed, payment required: every further request would fail alike.
STOP_RUN_STATUSES = frozenset({401, 402, 403})
REDACTED = "[REDACTED]"
MIN_REDACTED_LEN = 8
OUT_OF_CREDIT_CODES = frozenset({"insufficient_quota", "credit_balance_exhausted"})
MAX_MESSAGE_CHARS = 500


def _error_fields(body: dict[str, Any] | None) -> tuple[str | None, str | None, str | None]:
    """(code, type, message) of an OpenAI-shaped error body; code may be an int in vLLM,
    whose older servers also put the error at the top level ({"object": "error", ...})."""
    error = body.get("error") if body else None
    if error is None and body is not None and body.get("object") == "error":
        error = body
    if isinstance(error, str):  # some gateways answer {"error": "text"}
        return None, None, error[:MAX_MESSAGE_CHARS]
    if not isinstance(error, dict):
        return None, None, None
    code, kind, message = error.get("code"), error.get("type"), error.get("message")
    return (
        None if code is None else str(code),
        kind if isinstance(kind, str) else None,
        message[:MAX_MESSAGE_CHARS] if isinstance(message, str) else None,
    )


def classify(
    status: int,
    headers: Mapping[str, str],
    body: dict[str, Any] | None,
    raw_text: str,
    now_s: float,
) -> tuple[Verdict, str | None, str | None, float | None]:
    """(verdict, code, message, retry-after seconds) for an HTTP answer."""
    if 200 <= status < 300:
        if body is not None and isinstance(body.get("choices"), list):
            return Verdict.SUCCESS, None, None, None
        # Some gateways answer an error with a 200: an exhausted account stops the run
        # as its 429 would; anything else may pass on a retry.
        code, kind, message = _error_fields(body)
        if code in OUT_OF_CREDIT_CODES or kind in OUT_OF_CREDIT_CODES:
            return Verdict.STOP_RUN, code or kind, message, None
        return (
            Verdict.RETRY,
            "invalid_response",
            f"a 2xx answer without a completion body{f': {message}' if message else ''}",
            None,
        )
    if 300 <= status < 400:
        # Not followed: a POST would come back a GET without its body, and the key might
        # go to another host. Every further request would be redirected alike.
        where = headers.get("Location") or "(no Location)"
        return (
            Verdict.STOP_RUN,
            f"http_{status}",
            f"the gateway redirects to {where[:2000]}: batchib does not follow redirects; "
            "if that is the gateway's address, use it as --base-url",
            None,
        )
    code, kind, message = _error_fields(body)
    if message is None:
        message = raw_text[:MAX_MESSAGE_CHARS] or f"HTTP {status}"
    code = code or kind or f"http_{status}"
    if status in STOP_RUN_STATUSES or (
        status == 429 and (code in OUT_OF_CREDIT_CODES or kind in OUT_OF_CREDIT_CODES)
    ):
        return Verdict.STOP_RUN, code, message, None
    wait_s = retry_after_s(headers, now_s)
    if wait_s is not None and wait_s > MAX_RETRY_AFTER_S:
        return (
            Verdict.GIVE_UP,
            code,
            f"{message} (server asked to retry after {wait_s:.0f} s)",
            None,
        )
    should_retry = headers.get("x-should-retry")
    if should_retry == "true":
        return Verdict.RETRY, code, message, wait_s
    if should_retry == "false":
        return Verdict.GIVE_UP, code, message, None
    if status in RETRYABLE_STATUSES or status >= 500:
        return Verdict.RETRY, code, message, wait_s
    return Verdict.GIVE_UP, code, message, None


class Scrubber:
    """Cuts the key out of a gateway's answer: its body (the raw bytes, and the strings
    JSON escapes could have hidden from them), the text reported when the body is not a
    JSON object, and the request id.

    A gateway may echo the key, in an error message say, and may escape it as it does
    (``\\/`` for ``/``, ``\\u0041`` for ``A``). The key is printable ASCII (ApiKey
    refuses anything else), so only those escapes (and ``\\"``, ``\\\\`` for a key
    holding a quote or a backslash) can hide it; ``\\n`` and the like, in nearly every
    real completion, cannot. Without such an escape the bytes are what the strings
    decode to, and one search of them settles it. With one, the parsed value is written
    again the way orjson writes (nothing escaped but ``"``, ``\\`` and control
    characters) and searched for the key written so; only a value that holds the key is
    walked. Very short keys would match ordinary text and are left alone.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret if len(secret) >= MIN_REDACTED_LEN else None
        self._raw = secret.encode()
        self._written = orjson.dumps(secret)[1:-1]  # as orjson writes it inside a string
        self._hiding = (
            (b"\\/", b"\\u")
            + ((b'\\"',) if '"' in secret else ())
            + ((b"\\\\",) if "\\" in secret else ())
        )

    def raw(self, raw: bytes) -> bytes:
        if self.secret is None or self._raw not in raw:
            return raw
        return raw.replace(self._raw, REDACTED.encode())

    def answer(self, raw: bytes) -> tuple[dict[str, Any] | None, str]:
        """(the body if it is a JSON object, else None; the text to report when it is
        not, else ""), without the key. `raw` has been through :meth:`raw`."""
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, raw[:MAX_MESSAGE_CHARS].decode("utf-8", "replace")
        # One memchr for a backslash first: most answers have none (then nothing can
        # hide the key), and searching for each escape costs a microsecond more.
        if self.secret is not None and b"\\" in raw and self._may_hide(raw):
            try:
                holds = self._written in orjson.dumps(value)
            except TypeError:  # nested deeper than orjson writes: cannot be checked
                return None, "(an answer nested too deeply to check for the key: withheld)"
            if holds:
                value = _replace_in(value, self.secret)
                if not isinstance(value, dict):
                    return None, orjson.dumps(value).decode()[:MAX_MESSAGE_CHARS]
        if isinstance(value, dict):
            return value, ""
        return None, raw[:MAX_MESSAGE_CHARS].decode("utf-8", "replace")

    def _may_hide(self, raw: bytes) -> bool:
        return any(escape in raw for escape in self._hiding)

    def text(self, value: str | None) -> str | None:
        if self.secret is None or value is None or self.secret not in value:
            return value
        return value.replace(self.secret, REDACTED)


def _replace_in(value: Any, secret: str) -> Any:
    """`value` (decoded JSON) with `secret` replaced in every string, keys included."""
    if isinstance(value, str):
        return value.replace(secret, REDACTED) if secret in value else value
    if isinstance(value, dict):
        return {_replace_in(k, secret): _replace_in(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_in(item, secret) for item in value]
    return value


class GatewayClient:
    """Sends chat-completion requests over one shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, secret: str) -> None:
        self._session = session
        self._url = url
        # Cut out of every answer here, once, so that no result, summary or message
        # downstream can carry the key.
        self._scrub = Scrubber(secret)

    async def send(self, body_bytes: bytes) -> Reply:
        """One attempt. Never raises for network or HTTP failures: they are Replies."""
        started = time.perf_counter()
        try:
            async with self._session.post(
                self._url, data=body_bytes, allow_redirects=False
            ) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except TimeoutError:
            return self._no_answer(started, "timeout", "no complete answer within the timeout")
        except aiohttp.ClientError as exc:
            # The exception text names the host and the failure, never headers.
            return self._no_answer(started, "connection_error", f"{type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - started) * 1000
        body, text = self._scrub.answer(self._scrub.raw(raw))
        verdict, code, message, wait_s = classify(status, headers, body, text, time.time())
        return Reply(
            verdict=verdict,
            status=status,
            body=body,
            request_id=self._scrub.text(headers.get("x-request-id")),
            code=code,
            message=self._scrub.text(message),  # a Location header may echo anything
            retry_after_s=wait_s,
            latency_ms=latency_ms,
            rate=parse_rate_headers(headers),
            retry_after_precise=wait_s is not None and "retry-after-ms" in headers,
            error_type=None if verdict is Verdict.SUCCESS else _error_fields(body)[1],
        )

    @staticmethod
    def _no_answer(started: float, code: str, message: str) -> Reply:
        return Reply(
            verdict=Verdict.RETRY,
            status=None,
            body=None,
            request_id=None,
            code=code,
            message=message[:MAX_MESSAGE_CHARS],
            retry_after_s=None,
            latency_ms=(time.perf_counter() - started) * 1000,
        )


@asynccontextmanager
async def open_client(settings: RunSettings) -> AsyncIterator[GatewayClient]:
    """A client with one session whose connection pool fits the concurrency."""
    # aiohttp's CA certificates, if batchib.cacerts deferred them: blocking, as the import
    # it stands for would have, and by now seldom for more than a few milliseconds.
    wait_until_loaded()
    connector = aiohttp.TCPConnector(
        limit=settings.concurrency, limit_per_host=0, ttl_dns_cache=300
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.timeout_s, sock_connect=settings.connect_timeout_s
    )
    headers = {
        "Authorization": f"Bearer {settings.api_key.reveal()}",
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers, raise_for_status=False
    ) as session:
        yield GatewayClient(session, settings.completions_url, settings.api_key.reveal())
    # Let the connector close its transports before the loop goes away.
    await asyncio.sleep(0)
