"""Checks on a chat-completion request body, with the 400 errors a gateway would send.

Hand-written rather than a JSON Schema: the simulator is a benchmark target and these few
checks are what clients get wrong in practice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from batchib.simulator.errors import ApiError

ROLES = ("developer", "system", "user", "assistant", "tool")
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
MAX_N = 128


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a validated chat-completion request that shape the answer."""

    model: str
    messages: Sequence[Mapping[str, Any]]
    n: int
    max_completion_tokens: int | None


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


def unknown_model(name: str) -> ApiError:
    """The 404 a gateway sends for a model it does not serve."""
    return ApiError(
        404,
        f"The model `{name}` does not exist or you do not have access to it.",
        "model_not_found",
    )
