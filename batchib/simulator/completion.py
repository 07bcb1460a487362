"""What the simulated model answers, and how long it takes: no HTTP."""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

from batchib.simulator.settings import SimulatorSettings
from batchib.simulator.text import count_tokens, prompt_text, reply_length, reply_words
from batchib.simulator.validation import MAX_N, ChatRequest

SYSTEM_FINGERPRINT = "fp_sim"


def complete(
    request: ChatRequest, served_model: str, settings: SimulatorSettings, prompt_tokens: int
) -> dict[str, Any]:
    """The ``chat.completion`` body for a valid request; usage matches the text exactly.

    ``prompt_tokens`` is :func:`batchib.simulator.text.prompt_tokens` of the messages,
    counted once by the caller, which also needs it for the rate limits.
    """
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
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served_model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def draw_latency_s(settings: SimulatorSettings, rng: random.Random) -> float:
    """One simulated latency in seconds, uniform within the configured spread."""
    if settings.latency_ms == 0:
        return 0.0
    low = settings.latency_ms * (1 - settings.latency_spread)
    high = settings.latency_ms * (1 + settings.latency_spread)
    return rng.uniform(low, high) / 1000
