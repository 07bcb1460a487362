"""Offline token estimates, made before a request is sent.

For now a cheap estimate: about four characters per token for text, the chat overhead
of the OpenAI cookbook (3 per message, 1 per name, 3 for the reply primer) and 85 per
image part (the `detail: low` price). A real tokenizer replaces the text part later.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER_TOKENS = 3
IMAGE_TOKENS = 85


def _text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "image_url":
            total += IMAGE_TOKENS
        elif isinstance(part.get("text"), str):
            total += _text_tokens(part["text"])
    return total


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Estimated prompt tokens of a chat body (messages, tool definitions)."""
    total = REPLY_PRIMER_TOKENS
    for message in body.get("messages", ()):
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        if "name" in message:
            total += TOKENS_PER_NAME
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                total += _text_tokens(str(call.get("function", "")))
    if "tools" in body:
        total += _text_tokens(str(body["tools"]))
    return total


def max_completion_tokens(body: dict[str, Any]) -> int | None:
    """The completion cap a body sets for all its choices, or None when unbounded."""
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    if not isinstance(cap, int) or isinstance(cap, bool):
        return None
    n = body.get("n", 1)
    return cap * (n if isinstance(n, int) and n > 0 else 1)


def estimate_request_tokens(body: dict[str, Any]) -> int:
    """What a gateway charges against a tokens-per-minute limit before it answers:
    the prompt plus the completion cap when one is set."""
    return estimate_prompt_tokens(body) + (max_completion_tokens(body) or 0)
