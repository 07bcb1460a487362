"""Input lines: recognising the three line formats, merging defaults, and turning every
bad line into an :class:`InvalidLine` with its file and line number. (Reading the files
in blocks is :mod:`batchib.source`.)

Formats (one JSON object per line, blank lines ignored):

1. OpenAI Batch API line: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``
2. a bare chat body: ``{"model"?, "messages": [...], ...}`` with optional ``custom_id``/``id``
   and ``metadata``
3. shorthand: ``{"id"?, "prompt": "...", "system"?, "model"?, ...body fields, "metadata"?}``
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, cast

import orjson

from batchib.config import RequestDefaults
from batchib.tokens import ROUGH_COUNTER, estimate_prompt_tokens, max_completion_tokens

STDIN = "-"
CHAT_URLS = frozenset({"/v1/chat/completions", "/chat/completions"})
ROLES = frozenset({"developer", "system", "user", "assistant", "tool", "function"})
BATCH_KEYS = frozenset({"custom_id", "method", "url", "body", "metadata"})
# orjson keeps integers in [-2**63, 2**64 - 1] exactly; beyond that it rounds to float.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
# A run of 19 digits, found by mapping every digit to "0" and searching for nineteen
# of them: bytes.translate and `in` are 2x faster than a regex on a typical line and
# 13x on a long one, and this runs for every line.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19
CAP_KEYS = ("max_tokens", "max_completion_tokens")


class Request:
    """One valid request, ready to send. Treat it as immutable.

    Made from a parsed body here, or (:meth:`from_fields`) from what another process
    parsed (:mod:`batchib.parseproc`): then the body dict is decoded from `body_bytes`
    only if asked for, which a run does only to count tokens exactly.
    """

    __slots__ = (
        "_body",
        "body_bytes",
        "body_hash",
        "completion_cap",
        "custom_id",
        "file",
        "line",
        "metadata",
        "model",
        "rough_prompt_tokens",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable in principle, like a dataclass

    custom_id: str
    # The body serialised once with sorted keys: sent as is and hashed as is.
    body_bytes: bytes
    body_hash: str
    file: str
    line: int
    metadata: Any
    # Read off the body once, when it is made and still in the CPU's caches: by the
    # time the request is sent, reading it again cost several µs a request (measured).
    model: str
    completion_cap: int | None  # see max_completion_tokens
    rough_prompt_tokens: int  # the chars/4 estimate
    _body: dict[str, Any] | None

    def __init__(
        self,
        custom_id: str,
        body: dict[str, Any],
        body_bytes: bytes,
        body_hash: str,
        file: str,
        line: int,
        metadata: Any,
    ) -> None:
        self.custom_id = custom_id
        self._body = body
        self.body_bytes = body_bytes
        self.body_hash = body_hash
        self.file = file
        self.line = line
        self.metadata = metadata
        self.model = str(body["model"])
        self.completion_cap = max_completion_tokens(body)
        self.rough_prompt_tokens = estimate_prompt_tokens(body, ROUGH_COUNTER)

    @classmethod
    def from_fields(cls, fields: RequestFields) -> Request:
        """The request :meth:`fields` described, its body left encoded."""
        request = cls.__new__(cls)
        (
            request.custom_id,
            request.body_bytes,
            request.body_hash,
            request.file,
            request.line,
            request.metadata,
            request.model,
            request.completion_cap,
            request.rough_prompt_tokens,
        ) = fields
        request._body = None
        return request

    def fields(self) -> RequestFields:
        """Everything but the body dict, as plain values (for another process)."""
        return (
            self.custom_id,
            self.body_bytes,
            self.body_hash,
            self.file,
            self.line,
            self.metadata,
            self.model,
            self.completion_cap,
            self.rough_prompt_tokens,
        )

    @property
    def body(self) -> dict[str, Any]:
        """The body as a dict (decoded from `body_bytes` on first use, if need be)."""
        if self._body is None:
            self._body = orjson.loads(self.body_bytes)
        return self._body

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return self.fields() == other.fields() and self.body == other.body

    def __repr__(self) -> str:
        return (
            f"Request(custom_id={self.custom_id!r}, file={self.file!r}, line={self.line!r}, "
            f"model={self.model!r}, body_bytes={self.body_bytes[:200]!r})"
        )


# custom_id, body_bytes, body_hash, file, line, metadata, model, completion_cap,
# rough_prompt_tokens: a Request without its body dict.
RequestFields = tuple[str, bytes, str, str, int, Any, str, int | None, int]


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """A line that cannot become a request, and why."""

    custom_id: str
    file: str
    line: int
    code: str
    message: str


class LineError(Exception):
    """Raised inside this module while recognising a line; never escapes it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.line_id: str | None = None  # the line's own id, when it had a valid one


def hash_body(body_bytes: bytes) -> str:
    return hashlib.sha256(body_bytes).hexdigest()


def positional_id(file: str, line: int) -> str:
    """The id of a line that names none: stable across reruns of the same file."""
    name = "stdin" if file == STDIN else os.path.basename(file)
    return f"{name}:{line}"


def parse_line(
    raw: bytes, file: str, line: int, defaults: RequestDefaults
) -> Request | InvalidLine:
    """Turn one non-blank input line into a Request, or an InvalidLine saying why not."""
    try:
        obj = _loads(raw)
    except LineError as exc:
        return InvalidLine(positional_id(file, line), file, line, exc.code, exc.message)
    return parse_object(obj, file, line, defaults)


def parse_object(
    obj: Any, file: str, line: int, defaults: RequestDefaults
) -> Request | InvalidLine:
    """Turn one decoded input line (any of the three formats) into a Request or not."""
    if not isinstance(obj, dict):
        kind = type(obj).__name__ if obj is not None else "null"
        return InvalidLine(
            positional_id(file, line),
            file,
            line,
            "not_an_object",
            f"expected a JSON object, got {kind}",
        )
    line_id: str | None = None
    try:
        line_id, body, metadata = _recognise(obj)
        _apply_defaults(body, defaults)
        _validate_body(body)
        body_bytes = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except LineError as exc:
        own_id = line_id or exc.line_id
        return InvalidLine(own_id or positional_id(file, line), file, line, exc.code, exc.message)
    except TypeError as exc:  # orjson.JSONEncodeError: only from a caller's own objects
        return InvalidLine(
            line_id or positional_id(file, line),
            file,
            line,
            "invalid_body",
            f"not JSON-serialisable: {exc}",
        )
    return Request(
        custom_id=line_id if line_id is not None else positional_id(file, line),
        body=body,
        body_bytes=body_bytes,
        body_hash=hash_body(body_bytes),
        file=file,
        line=line,
        metadata=metadata,
    )


def _check_int(text: str) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise LineError("number_out_of_range", f"the integer {text[:40]} is out of range")
    return value


def _loads(raw: bytes) -> Any:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LineError("invalid_json", f"not valid JSON: {exc}") from exc
    # orjson turns integers beyond 64 bits into floats, silently changing them; a long
    # run of digits is rare enough to afford an exact second look with the stdlib.
    if _LONG_DIGITS in raw.translate(_DIGITS_TO_ZERO):
        json.loads(raw, parse_int=_check_int)
    return value


def _line_id(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise LineError("invalid_id", f"`{field}` must be a string or an integer")
    text = str(value)
    if not text.strip():
        raise LineError("invalid_id", f"`{field}` must not be empty")
    return text


def _recognise(obj: dict[str, Any]) -> tuple[str | None, dict[str, Any], Any]:
    """Return (custom_id or None, a fresh body dict, metadata) for any of the formats.
    The id is read first: a line rejected for anything else keeps it in its record, so
    that readers matching on custom_id find the failure."""
    batch = "body" in obj or "url" in obj or "method" in obj
    line_id = _line_id(obj.get("custom_id"), "custom_id") if batch else _chat_line_id(obj)
    try:
        body, metadata = _recognise_batch_line(obj) if batch else _recognise_chat_line(obj)
    except LineError as exc:
        exc.line_id = line_id
        raise
    return line_id, body, metadata


def _chat_line_id(obj: dict[str, Any]) -> str | None:
    if "custom_id" in obj and "id" in obj:
        raise LineError("ambiguous_id", "a line has both `custom_id` and `id`; keep one")
    return _line_id(obj.get("custom_id"), "custom_id") or _line_id(obj.get("id"), "id")


def _recognise_chat_line(obj: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """A chat body or the shorthand, without its id (read already)."""
    if "messages" in obj and "prompt" in obj:
        raise LineError("ambiguous_line", "a line has both `messages` and `prompt`; keep one")
    if "messages" not in obj and "prompt" not in obj:
        raise LineError(
            "unknown_shape",
            "a line needs `messages` (chat body), `prompt` (shorthand) "
            "or `body` (OpenAI batch line)",
        )
    body = dict(obj)
    body.pop("custom_id", None)
    body.pop("id", None)
    metadata = body.pop("metadata", None)
    if "prompt" in body:
        prompt = body.pop("prompt")
        system = body.pop("system", None)
        if not isinstance(prompt, str) or not prompt.strip():
            raise LineError("invalid_prompt", "`prompt` must be a non-empty string")
        if system is not None and not isinstance(system, str):
            raise LineError("invalid_system", "`system` must be a string")
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        body["messages"] = messages
    return body, metadata


def _recognise_batch_line(obj: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """An OpenAI batch line's body, without its id (read already)."""
    unexpected = sorted(set(obj) - BATCH_KEYS)
    if unexpected:
        raise LineError(
            "unknown_shape",
            f"an OpenAI batch line has unexpected fields: {', '.join(unexpected)}",
        )
    method = obj.get("method", "POST")
    if method != "POST":  # comparison, not lookup: safe for any JSON value
        raise LineError("unsupported_method", f"method must be POST, got {method!r}")
    url = obj.get("url", "/v1/chat/completions")
    if not isinstance(url, str) or url not in CHAT_URLS:
        raise LineError(
            "unsupported_url", f"url must be /v1/chat/completions, got {str(url)[:200]!r}"
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_body", "`body` must be a JSON object")
    return dict(body), obj.get("metadata")


def _apply_defaults(body: dict[str, Any], defaults: RequestDefaults) -> None:
    # A line that sets either completion cap keeps it alone: sending both caps would
    # be ambiguous (the gateway picks one) and change what the line asked for.
    # Plain `in` tests, not any(... for key in CAP_KEYS): this runs for every line.
    line_has_cap = "max_tokens" in body or "max_completion_tokens" in body
    for key, value in defaults.params.items():
        if not (line_has_cap and key in CAP_KEYS):
            body.setdefault(key, value)
    if defaults.model is not None and body.get("model") is None:
        body["model"] = defaults.model
    if (
        defaults.max_tokens is not None
        and "max_tokens" not in body
        and "max_completion_tokens" not in body
    ):
        body["max_tokens"] = defaults.max_tokens
    if defaults.temperature is not None:
        body.setdefault("temperature", defaults.temperature)
    messages = body.get("messages")
    if defaults.system and isinstance(messages, list):
        has_instructions = any(
            isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages
        )
        if not has_instructions:
            body["messages"] = [{"role": "system", "content": defaults.system}, *messages]


def _positive_int(body: dict[str, Any], key: str, upper: int | None = None) -> None:
    if key not in body:
        return
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LineError("invalid_body", f"`{key}` must be a positive integer")
    if upper is not None and value > upper:
        raise LineError("invalid_body", f"`{key}` must be at most {upper}")


def _validate_body(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise LineError("missing_model", "no model: set `model` on the line or pass --model")
    if not isinstance(model, str) or not model.strip():
        raise LineError("invalid_model", "`model` must be a non-empty string")
    if body.get("stream"):
        raise LineError(
            "stream_not_supported", "`stream: true` is not supported in a batch; remove it"
        )
    if "stream_options" in body:  # the gateway answers 400 without stream: true
        raise LineError(
            "stream_not_supported",
            "`stream_options` needs `stream: true`, which a batch does not use; remove it",
        )
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise LineError("invalid_messages", "`messages` must be a list")
    if not messages:
        raise LineError("empty_messages", "`messages` is empty")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise LineError("invalid_message", f"messages[{index}] must be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise LineError(
                "invalid_message",
                f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}",
            )
        content = message.get("content")
        if role == "assistant":
            if content is not None and not isinstance(content, str | list):
                raise LineError(
                    "invalid_message", f"messages[{index}].content must be text or parts"
                )
        elif not isinstance(content, str | list):
            raise LineError("invalid_message", f"messages[{index}].content is missing")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise LineError("invalid_message", f"messages[{index}] (tool) needs `tool_call_id`")
    _positive_int(body, "n", upper=128)
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")


def open_input(path: str) -> io.BufferedReader:
    """The binary stream of an input file, or stdin's for "-"."""
    if path == STDIN:
        return cast(io.BufferedReader, sys.stdin.buffer)
    return open(path, "rb")


def shard_of(custom_id: str, count: int) -> int:
    """The shard (1..count) a custom_id belongs to: stable across machines and runs."""
    digest = hashlib.sha256(custom_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1
