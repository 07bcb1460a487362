"""The gateway simulator: pure text functions by table, HTTP against a loopback server."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator

from batchib.simulator import SimulatorSettings, create_app, serve
from batchib.simulator.completion import draw_latency_s
from batchib.simulator.text import (
    VOCABULARY,
    count_tokens,
    prompt_tokens,
    reply_length,
    reply_words,
)

SCHEMAS = json.loads((Path(__file__).parent / "data" / "chat_schemas.json").read_text())
RESPONSE_SCHEMA = Draft202012Validator(SCHEMAS["CreateChatCompletionResponse_lenient"])
ERROR_SCHEMA = Draft202012Validator(SCHEMAS["ErrorResponse"])
REQUEST_SCHEMA = Draft202012Validator(SCHEMAS["CreateChatCompletionRequest"])

KEY = "sk-test-simulator-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "Say hello to the batch runner."}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": HELLO, **fields}


@dataclass(frozen=True)
class Call:
    path: str = "/v1/chat/completions"
    body: object = None
    raw: bytes | None = None
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=lambda: AUTH)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any


async def _exchange(settings: SimulatorSettings, calls: tuple[Call, ...]) -> list[Reply]:
    replies = []
    async with TestServer(create_app(settings)) as server, aiohttp.ClientSession() as session:
        for call in calls:
            data = call.raw if call.raw is not None else json.dumps(call.body).encode()
            async with session.request(
                call.method, server.make_url(call.path), data=data, headers=dict(call.headers)
            ) as response:
                body = await response.json(content_type=None)
                # Header names are case-insensitive; keep them so.
                replies.append(Reply(response.status, response.headers.copy(), body))
    return replies


def exchange(*calls: Call, settings: SimulatorSettings | None = None) -> list[Reply]:
    return asyncio.run(_exchange(settings or SimulatorSettings(tokenizer="words"), calls))


def send(call: Call, settings: SimulatorSettings | None = None) -> Reply:
    return exchange(call, settings=settings)[0]


def assert_error(reply: Reply, status: int, code: str | None, param: str | None = None) -> None:
    assert reply.status == status, reply.body
    ERROR_SCHEMA.validate(reply.body)
    assert reply.body["error"]["code"] == code
    assert reply.body["error"]["param"] == param
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["x-request-id"].startswith("req_")


def assert_usage_matches_text(body: Mapping[str, Any]) -> None:
    usage = body["usage"]
    texts = [choice["message"]["content"] for choice in body["choices"]]
    assert usage["completion_tokens"] == sum(count_tokens(text) for text in texts)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# --- pure functions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("   \n\t ", 0),
        ("hello", 1),
        ("Hello, world!", 4),
        ("don't", 3),
        ("snake_case_name", 1),
        ("3.14", 3),
        ("naïve café", 2),
        ("日本語", 1),
        ("👍👍", 2),
        ("a\n\nb", 2),
    ],
)
def test_count_tokens_counts_words_and_punctuation(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


@pytest.mark.parametrize(
    ("messages", "tokens"),
    [
        ([], 3),
        ([{"role": "user", "content": "Hello, world!"}], 3 + 3 + 4),
        ([{"role": "user", "content": "hi", "name": "bob"}], 3 + 3 + 1 + 1),
        ([{"role": "assistant", "content": None}], 3 + 3),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                }
            ],
            3 + 3 + 3 + 85,
        ),
        (
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ok."}],
            3 + (3 + 2) + (3 + 2),
        ),
    ],
)
def test_prompt_tokens_follows_cookbook_overheads(
    messages: list[dict[str, Any]], tokens: int
) -> None:
    assert prompt_tokens(messages) == tokens


def test_every_vocabulary_word_is_one_token() -> None:
    assert all(count_tokens(word) == count_tokens(word.capitalize()) == 1 for word in VOCABULARY)


@pytest.mark.parametrize("n_words", [0, 1, 8, 64, 500])
def test_reply_words_is_deterministic_and_one_token_per_word(n_words: int) -> None:
    words = reply_words("a prompt", n_words, seed=7)
    assert words == reply_words("a prompt", n_words, seed=7)
    assert len(words) == n_words
    assert count_tokens(" ".join(words)) == n_words


def test_reply_words_depend_on_prompt_and_seed_and_shorter_is_prefix() -> None:
    long = reply_words("a prompt", 40, seed=1)
    assert reply_words("a prompt", 10, seed=1) == long[:10]
    assert reply_words("another prompt", 40, seed=1) != long
    assert reply_words("a prompt", 40, seed=2) != long


@pytest.mark.parametrize("max_words", [1, 5, 8, 9, 64])
def test_reply_length_stays_within_bounds(max_words: int) -> None:
    lengths = {reply_length(f"prompt {i}", 0, max_words) for i in range(50)}
    assert min(lengths) >= min(8, max_words)
    assert max(lengths) <= max_words


@pytest.mark.parametrize(
    ("latency_ms", "spread", "low_s", "high_s"),
    [(0.0, 0.5, 0.0, 0.0), (100.0, 0.0, 0.1, 0.1), (100.0, 0.5, 0.05, 0.15), (10.0, 1.0, 0, 0.02)],
)
def test_latency_is_drawn_within_spread(
    latency_ms: float, spread: float, low_s: float, high_s: float
) -> None:
    settings = SimulatorSettings(latency_ms=latency_ms, latency_spread=spread)
    rng = random.Random(0)
    draws = [draw_latency_s(settings, rng) for _ in range(200)]
    assert all(low_s - 1e-12 <= d <= high_s + 1e-12 for d in draws)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latency_ms": -1.0},
        {"latency_ms": float("nan")},
        {"latency_spread": 1.5},
        {"latency_spread": -0.1},
        {"models": {}},
        {"models": {"a": ""}},
        {"require_key": ""},
        {"default_completion_tokens": 0},
    ],
)
def test_settings_reject_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorSettings(**kwargs)


def test_settings_repr_hides_required_key() -> None:
    assert KEY not in repr(SimulatorSettings(require_key=KEY))


# --- HTTP: success ----------------------------------------------------------------------


def test_success_body_is_schema_valid_with_consistent_usage() -> None:
    body = chat()
    REQUEST_SCHEMA.validate(body)
    reply = send(Call(body=body))
    assert reply.status == 200
    RESPONSE_SCHEMA.validate(reply.body)
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["x-request-id"].startswith("req_")
    assert reply.body["id"].startswith("chatcmpl-")
    assert reply.body["choices"][0]["finish_reason"] == "stop"
    assert reply.body["usage"]["prompt_tokens"] == prompt_tokens(HELLO)
    assert_usage_matches_text(reply.body)


def test_same_prompt_gets_same_reply() -> None:
    first, second = exchange(Call(body=chat()), Call(body=chat()))
    assert first.body["choices"] == second.body["choices"]
    assert first.body["usage"] == second.body["usage"]
    assert first.body["id"] != second.body["id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_reply_length_is_natural_between_8_and_default_completion_tokens() -> None:
    settings = SimulatorSettings(default_completion_tokens=20)
    calls = [Call(body=chat(messages=[{"role": "user", "content": f"q{i}"}])) for i in range(10)]
    for reply in exchange(*calls, settings=settings):
        assert 8 <= reply.body["usage"]["completion_tokens"] <= 20


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
def test_token_limit_cuts_reply_with_finish_reason_length(limit_field: str) -> None:
    full, cut = exchange(Call(body=chat()), Call(body=chat(**{limit_field: 3})))
    assert full.body["usage"]["completion_tokens"] > 3
    assert cut.body["choices"][0]["finish_reason"] == "length"
    assert cut.body["usage"]["completion_tokens"] == 3
    assert full.body["choices"][0]["message"]["content"].startswith(
        cut.body["choices"][0]["message"]["content"]
    )
    assert_usage_matches_text(cut.body)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    reply = send(Call(body=chat(max_tokens=2, max_completion_tokens=4)))
    assert reply.body["usage"]["completion_tokens"] == 4


def test_limit_above_natural_length_finishes_with_stop() -> None:
    reply = send(Call(body=chat(max_completion_tokens=10_000)))
    assert reply.body["choices"][0]["finish_reason"] == "stop"


def test_n_3_returns_three_choices_and_bills_all_of_them() -> None:
    reply = send(Call(body=chat(n=3)))
    assert reply.status == 200
    RESPONSE_SCHEMA.validate(reply.body)
    choices = reply.body["choices"]
    assert [choice["index"] for choice in choices] == [0, 1, 2]
    assert len({choice["message"]["content"] for choice in choices}) > 1
    assert_usage_matches_text(reply.body)


def test_alias_is_served_as_dated_model_and_served_name_as_itself() -> None:
    alias, dated = exchange(
        Call(body=chat(model="gpt-4o-mini")), Call(body=chat(model="gpt-4o-mini-2024-07-18"))
    )
    assert alias.body["model"] == "gpt-4o-mini-2024-07-18"
    assert dated.body["model"] == "gpt-4o-mini-2024-07-18"


def test_route_without_v1_prefix_answers_too() -> None:
    assert send(Call(path="/chat/completions", body=chat())).status == 200


def test_latency_delays_the_answer_within_bounds() -> None:
    settings = SimulatorSettings(latency_ms=20, latency_spread=0.5)

    async def timed() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await _exchange(settings, (Call(body=chat()),))
        return loop.time() - start

    # The lower bound is 10 ms; allow for the event loop clock waking a hair early.
    assert asyncio.run(timed()) >= 0.009


def test_multimodal_user_message_is_accepted() -> None:
    content = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    reply = send(Call(body=chat(messages=[{"role": "user", "content": content}])))
    assert reply.status == 200
    assert reply.body["usage"]["prompt_tokens"] == 3 + 3 + 1 + 85


# --- HTTP: errors -----------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found() -> None:
    reply = send(Call(body=chat(model="gpt-9")))
    assert_error(reply, 404, "model_not_found")
    assert reply.body["error"]["type"] == "invalid_request_error"
    assert reply.body["error"]["message"] == (
        "The model `gpt-9` does not exist or you do not have access to it."
    )


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Bearer "}, {"Authorization": KEY}],
)
def test_missing_key_is_401(headers: dict[str, str]) -> None:
    assert_error(send(Call(body=chat(), headers=headers)), 401, "invalid_api_key")


def test_wrong_key_is_401_without_echoing_it_when_key_is_required() -> None:
    settings = SimulatorSettings(require_key=KEY)
    wrong = "sk-wrong-key-456"
    bad, good = exchange(
        Call(body=chat(), headers={"Authorization": f"Bearer {wrong}"}),
        Call(body=chat()),
        settings=settings,
    )
    assert_error(bad, 401, "invalid_api_key")
    assert wrong not in json.dumps(bad.body)
    assert "wrong-key" not in json.dumps(bad.body)
    assert good.status == 200


def test_any_key_is_accepted_when_none_is_required() -> None:
    reply = send(Call(body=chat(), headers={"Authorization": "Bearer anything"}))
    assert reply.status == 200


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"{not json", "invalid_json"), (b"", "invalid_json"), (b"[1, 2]", "invalid_type")],
)
def test_body_that_is_not_a_json_object_is_400(raw: bytes, code: str) -> None:
    assert_error(send(Call(raw=raw)), 400, code)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"messages": HELLO}, "missing_required_parameter", "model"),
        (chat(model=""), "missing_required_parameter", "model"),
        (chat(model=5), "invalid_type", "model"),
        ({"model": "gpt-4.1"}, "missing_required_parameter", "messages"),
        (chat(messages=[]), "empty_array", "messages"),
        (chat(messages="hi"), "invalid_type", "messages"),
        (chat(messages=["hi"]), "invalid_type", "messages[0]"),
        (chat(messages=[{"role": "robot", "content": "x"}]), "invalid_value", "messages[0].role"),
        (chat(messages=[{"content": "x"}]), "missing_required_parameter", "messages[0].role"),
        (chat(messages=[{"role": "user"}]), "missing_required_parameter", "messages[0].content"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "video"}]}]),
            "invalid_value",
            "messages[0].content[0].type",
        ),
        (
            chat(messages=[{"role": "tool", "content": "42"}]),
            "missing_required_parameter",
            "messages[0].tool_call_id",
        ),
        (chat(stream=True), "unsupported_value", "stream"),
        (chat(n=0), "integer_below_min_value", "n"),
        (chat(n=129), "integer_above_max_value", "n"),
        (chat(n=True), "invalid_type", "n"),
        (chat(max_tokens=0), "integer_below_min_value", "max_tokens"),
        (chat(max_completion_tokens="5"), "invalid_type", "max_completion_tokens"),
    ],
)
def test_invalid_request_is_400_naming_the_param(body: object, code: str, param: str) -> None:
    assert_error(send(Call(body=body)), 400, code, param)


def test_stream_true_error_says_streaming_is_unsupported() -> None:
    reply = send(Call(body=chat(stream=True)))
    assert "not supported" in reply.body["error"]["message"]


def test_unknown_route_is_404_in_openai_shape() -> None:
    assert_error(send(Call(path="/v1/embeddings", body={})), 404, None)


# --- HTTP: models -----------------------------------------------------------------------


def test_models_lists_every_alias_and_served_name() -> None:
    reply = send(Call(path="/v1/models", method="GET", raw=b""))
    assert reply.status == 200
    assert reply.headers["x-request-id"].startswith("req_")
    ids = [model["id"] for model in reply.body["data"]]
    assert reply.body["object"] == "list"
    assert set(ids) == set(SimulatorSettings().model_ids())
    assert {"gpt-5.4", "gpt-5.4-2026-03-01", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"} <= set(ids)
    assert len(ids) == len(set(ids)) == 8
    assert all(
        m["object"] == "model" and m["owned_by"] == "batchib-simulator" for m in reply.body["data"]
    )


def test_models_requires_a_key() -> None:
    reply = send(Call(path="/models", method="GET", raw=b"", headers={}))
    assert_error(reply, 401, "invalid_api_key")


# --- serve() ----------------------------------------------------------------------------


def test_serve_reports_bound_url_and_stops_on_cancel() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        base_url: asyncio.Future[str] = loop.create_future()
        task = asyncio.create_task(serve(SimulatorSettings(), ready=base_url.set_result))
        url = await asyncio.wait_for(base_url, timeout=5)
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/v1")
        assert not url.endswith(":0/v1")
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/chat/completions", json=chat(), headers=AUTH) as response,
        ):
            assert response.status == 200
            RESPONSE_SCHEMA.validate(await response.json())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"{url}/models", headers=AUTH)

    asyncio.run(scenario())
