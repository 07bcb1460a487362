"""Token counting and reply text of the simulator: pure functions, no HTTP.

The simulator's tokenizer is deliberately simple (a word or a punctuation mark is one
token) so tests can check usage exactly against the returned text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER_TOKENS = 3
IMAGE_TOKENS = 85
MIN_REPLY_WORDS = 8

_TOKEN = re.compile(r"\w+|[^\w\s]")

# Every entry is a single \w+ run, so each word is exactly one token, capitalised or not.
VOCABULARY: tuple[str, ...] = (
    "the", "a", "model", "answer", "batch", "request", "token", "simulated", "reply",
    "gateway", "quick", "steady", "result", "line", "value", "data", "order", "note",
    "clear", "short", "plain", "text", "signal", "report", "check", "record", "input",
    "output", "fine", "ready", "stable", "sample", "and", "of", "to", "with", "for",
    "on", "in", "is", "was", "will", "each", "every", "some", "many", "this", "that",
    "here", "there", "now", "then", "field", "count", "limit", "rate", "queue", "worker",
    "retry", "usage", "prompt", "choice", "finish", "stop",
)  # fmt: skip


def count_tokens(text: str) -> int:
    """Tokens in ``text``: each run of word characters and each other non-space character."""
    return len(_TOKEN.findall(text))


def _content_tokens(content: object) -> int:
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        text = part.get("text")
        if kind == "image_url":
            total += IMAGE_TOKENS
        elif isinstance(text, str):
            total += count_tokens(text)
    return total


def prompt_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """Prompt tokens of a chat request, after OpenAI's cookbook rule.

    3 per message, plus the tokens of its string content or text parts, plus 1 if it has
    a ``name``; 85 per image part; 3 more for the primer of the reply.
    """
    total = REPLY_PRIMER_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        if "name" in message:
            total += TOKENS_PER_NAME
    return total


def prompt_text(messages: Sequence[Mapping[str, object]]) -> str:
    """The roles and text of ``messages`` as one string: what a reply is derived from."""
    lines: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts = [content]
        elif isinstance(content, list):
            texts = [
                part["text"]
                for part in content
                if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            ]
        else:
            texts = []
        lines.append(f"{message.get('role')}: {' '.join(texts)}")
    return "\n".join(lines)


def _rng(purpose: str, prompt: str, seed: int) -> random.Random:
    # A str seed is hashed with SHA-512 by random.Random, so the result does not depend
    # on PYTHONHASHSEED: the same prompt gives the same reply in every process.
    return random.Random(f"{purpose}\0{seed}\0{prompt}")


def reply_length(prompt: str, seed: int, max_words: int) -> int:
    """Natural reply length for ``prompt``: between ``min(8, max_words)`` and ``max_words``."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    return _rng("length", prompt, seed).randint(min(MIN_REPLY_WORDS, max_words), max_words)


def reply_words(prompt: str, n_words: int, seed: int) -> list[str]:
    """``n_words`` words derived from ``prompt`` and ``seed``; each word is one token.

    Shorter replies are prefixes of longer ones, so cutting a reply at a token limit
    gives the start of the reply the model would have given without the limit.
    """
    if n_words < 0:
        raise ValueError(f"n_words must be >= 0, got {n_words}")
    rng = _rng("reply", prompt, seed)
    words = [rng.choice(VOCABULARY) for _ in range(n_words)]
    if words:
        words[0] = words[0].capitalize()
    return words
