"""The simulator's request log: what the client did, seen from the server's side."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from batchib.simulator import SimulatorSettings, create_app
from batchib.simulator.settings import FaultRates
from batchib.simulator.text import prompt_tokens

KEY = "sk-test-log-key-321"
HELLO = [{"role": "user", "content": "Log this request."}]
LOG_FIELDS = {
    "t",
    "key",
    "body_sha256",
    "status",
    "fault",
    "tokens_charged",
    "model",
    "request_id",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body_bytes(**fields: Any) -> bytes:
    # Deliberately not canonical JSON: the log must hash the bytes as sent.
    return json.dumps({"model": "gpt-4.1", "messages": HELLO, **fields}, indent=1).encode()


@dataclass(frozen=True)
class Sent:
    body: bytes
    key: str | None = KEY
    fault: str | None = None
    path: str = "/v1/chat/completions"
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Got:
    status: int | None  # None: the connection closed without an answer
    request_id: str | None
    body: Any = None


async def _exchange(settings: SimulatorSettings, sends: list[Sent]) -> list[Got]:
    got: list[Got] = []
    async with TestServer(create_app(settings)) as server, aiohttp.ClientSession() as session:
        for sent in sends:
            headers = dict(sent.headers)
            if sent.key is not None:
                headers["Authorization"] = f"Bearer {sent.key}"
            if sent.fault is not None:
                headers["x-batchib-fault"] = sent.fault
            try:
                async with session.request(
                    sent.method, server.make_url(sent.path), data=sent.body, headers=headers
                ) as response:
                    body = await response.json(content_type=None)
                    got.append(Got(response.status, response.headers["x-request-id"], body))
            except aiohttp.ServerDisconnectedError:
                got.append(Got(None, None))
    return got


def exchange(settings: SimulatorSettings, sends: list[Sent]) -> list[Got]:
    return asyncio.run(_exchange(settings, sends))


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_has_one_line_per_completions_request_with_what_the_server_saw(
    tmp_path: Path,
) -> None:
    log = tmp_path / "requests.jsonl"
    settings = SimulatorSettings(log_path=log, rpm=4, require_key=KEY, tokenizer="words")
    capped = body_bytes(max_completion_tokens=5, n=2)
    sends = [
        Sent(body_bytes()),
        Sent(capped),
        Sent(body_bytes(), key=None),
        Sent(body_bytes(), key="sk-wrong"),
        Sent(b"{not json"),
        Sent(body_bytes(model="gpt-9")),
        Sent(body_bytes(), fault="drop"),
        Sent(body_bytes(), fault="503"),
        Sent(body_bytes()),
        Sent(b"", path="/v1/models", method="GET"),
    ]
    got = exchange(settings, sends)
    lines = read_log(log)

    # The models request is not a completions request: no line.
    assert len(lines) == len(sends) - 1
    assert all(set(line) == LOG_FIELDS for line in lines)
    assert all(isinstance(line["t"], float) for line in lines)
    assert [line["body_sha256"] for line in lines] == [sha256(s.body) for s in sends[:-1]]
    assert [line["status"] for line in lines] == [200, 200, 401, 401, 400, 404, None, 503, 429]
    assert [line["status"] for line in lines] == [g.status for g in got[:-1]]
    assert [line["request_id"] for line in lines] == [g.request_id for g in got[:-1]]
    assert [line["fault"] for line in lines] == [None] * 6 + ["drop", "503", None]
    # A body refused before the gateway reads it (401) or unreadable (400) names no model.
    assert [line["model"] for line in lines] == ["gpt-4.1"] * 2 + [None] * 3 + ["gpt-9"] + [
        "gpt-4.1"
    ] * 3
    key_hash = sha256(KEY.encode())[:16]
    assert [line["key"] for line in lines] == [key_hash] * 2 + [
        None,
        sha256(b"sk-wrong")[:16],
    ] + [key_hash] * 5
    assert KEY not in log.read_text()

    n_prompt = prompt_tokens(HELLO)
    assert lines[0]["tokens_charged"] == got[0].body["usage"]["total_tokens"]
    assert lines[1]["tokens_charged"] == n_prompt + 5 * 2
    # Refused before the gateway took them: nothing charged.
    assert [line["tokens_charged"] for line in lines[2:6]] == [0, 0, 0, 0]
    assert lines[8]["tokens_charged"] == 0
    # Taken, then failed: charged what was due before answering.
    assert lines[6]["tokens_charged"] == lines[7]["tokens_charged"] == n_prompt


def test_hung_request_whose_client_left_is_logged_as_unanswered(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    settings = SimulatorSettings(log_path=log, faults=FaultRates(hang_s=30))

    async def run() -> None:
        async with TestServer(create_app(settings)) as server, aiohttp.ClientSession() as session:
            with pytest.raises(TimeoutError):
                await session.post(
                    server.make_url("/v1/chat/completions"),
                    data=body_bytes(),
                    headers={"Authorization": f"Bearer {KEY}", "x-batchib-fault": "hang"},
                    timeout=aiohttp.ClientTimeout(total=0.02),
                )

    asyncio.run(run())
    (line,) = read_log(log)
    assert (line["status"], line["fault"], line["request_id"]) == (None, "hang", None)


def test_log_is_appended_to_across_restarts(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    settings = SimulatorSettings(log_path=log)
    exchange(settings, [Sent(body_bytes())])
    exchange(settings, [Sent(body_bytes()), Sent(body_bytes())])
    assert len(read_log(log)) == 3


def test_simulate_command_wires_limits_faults_and_log(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BATCHIB_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchib",
            "simulate",
            "--rpm",
            "2",
            "--fail-503",
            "1",
            "--log",
            str(log),
        ],
        stdout=subprocess.PIPE,
        env=environ,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().split()[-1]
        assert url.startswith("http://127.0.0.1:")

        async def run() -> list[tuple[int, str | None]]:
            async with aiohttp.ClientSession() as session:
                statuses = []
                for _ in range(3):
                    async with session.post(
                        f"{url}/chat/completions",
                        data=body_bytes(),
                        headers={"Authorization": f"Bearer {KEY}"},
                    ) as response:
                        statuses.append(
                            (response.status, response.headers.get("x-ratelimit-limit-requests"))
                        )
                return statuses

        assert asyncio.run(run()) == [(503, "2"), (503, "2"), (429, "2")]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert [line["status"] for line in read_log(log)] == [503, 503, 429]
