"""A gateway whose answers a test scripts per prompt, served on loopback over real HTTP.

`ScriptedGateway({"p1": [reply(500), reply(200)]})` answers the first request whose
last message is "p1" with a 500 and the second with a completion. Prompts with no script
(or an exhausted one) get a completion. Every received request is recorded with its
arrival time and the peak number of requests in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

Action = Callable[[web.Request], Awaitable[web.StreamResponse]]


def completion(model: str = "served-model-1") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def reply(
    status: int,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    *,
    raw: bytes | None = None,
) -> Action:
    """Answer with `status`; the body defaults to a completion (2xx) or an error."""

    async def act(request: web.Request) -> web.StreamResponse:
        payload = body
        if payload is None:
            payload = (
                completion()
                if status < 300
                else {"error": {"message": f"scripted {status}", "type": "x", "code": None}}
            )
        data = raw if raw is not None else orjson.dumps(payload)
        return web.Response(
            status=status,
            body=data,
            headers={"x-request-id": f"req_{status}", **(headers or {})},
            content_type="application/json",
        )

    return act


def error(status: int, code: str, headers: Mapping[str, str] | None = None) -> Action:
    return reply(status, {"error": {"message": code, "type": "x", "code": code}}, headers)


def close_connection() -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=200)

    return act


def hang(seconds: float) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await reply(200)(request)

    return act


@dataclass
class Received:
    prompt: str
    body: dict[str, Any]
    headers: Mapping[str, str]
    at: float


@dataclass
class ScriptedGateway:
    script: dict[str, list[Action]] = field(default_factory=dict)
    default: Action = field(default_factory=lambda: reply(200))
    latency_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    max_body_bytes: int = 1024**2  # aiohttp's default

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        prompt = str(body["messages"][-1]["content"])
        self.received.append(Received(prompt, body, dict(request.headers), time.monotonic()))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            steps = self.script.get(prompt)
            action = steps.pop(0) if steps else self.default
            return await action(request)
        finally:
            self.in_flight -= 1

    def sent(self, prompt: str) -> int:
        return sum(1 for r in self.received if r.prompt == prompt)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on loopback; yields the base URL."""
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/v1/chat/completions", self.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("/v1"))
        finally:
            await server.close()
