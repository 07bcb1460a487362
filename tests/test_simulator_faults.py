"""Fault injection in the simulator: forced by header, drawn at random, revoked keys."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from batchib.simulator import SimulatorSettings, create_app
from batchib.simulator.cli import simulate
from batchib.simulator.faults import Fault, FaultInjector, forced_fault
from batchib.simulator.settings import FaultRates

SCHEMAS = json.loads((Path(__file__).parent / "data" / "chat_schemas.json").read_text())
ERROR_SCHEMA = Draft202012Validator(SCHEMAS["ErrorResponse"])
RESPONSE_SCHEMA = Draft202012Validator(SCHEMAS["CreateChatCompletionResponse_lenient"])

KEY = "sk-test-faults-key-789"
BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hello, faults."}]}
T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    raw: bytes

    def json(self) -> Any:
        return orjson.loads(self.raw)


@dataclass(frozen=True)
class Client:
    session: aiohttp.ClientSession
    server: TestServer

    async def post(
        self, fault: str | None = None, key: str = KEY, timeout_s: float | None = None
    ) -> Reply:
        headers = {"Authorization": f"Bearer {key}"}
        if fault is not None:
            headers["x-batchib-fault"] = fault
        async with self.session.post(
            self.server.make_url("/v1/chat/completions"),
            json=BODY,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            return Reply(response.status, response.headers.copy(), await response.read())


def scenario(
    settings: SimulatorSettings,
    run: Callable[[Client], Awaitable[T]],
    clock: Callable[[], float] = time.monotonic,
) -> T:
    async def main() -> T:
        app = create_app(settings, clock=clock)
        # TestServer cancels a handler whose client left, so a hung request ends with it.
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            return await run(Client(session, server))

    return asyncio.run(main())


def post_once(fault: str | None, settings: SimulatorSettings | None = None) -> Reply:
    async def run(client: Client) -> Reply:
        return await client.post(fault)

    return scenario(settings or SimulatorSettings(), run)


# --- forced by header -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code", "error_type"),
    [
        ("500", 500, "server_error", "server_error"),
        ("502", 502, "bad_gateway", "server_error"),
        ("503", 503, "server_is_overloaded", "server_error"),
        ("quota", 429, "insufficient_quota", "insufficient_quota"),
        ("401", 401, "invalid_api_key", "invalid_request_error"),
    ],
)
def test_forced_error_fault_answers_in_openai_shape(
    fault: str, status: int, code: str, error_type: str
) -> None:
    reply = post_once(fault)
    assert reply.status == status
    body = reply.json()
    ERROR_SCHEMA.validate(body)
    assert body["error"]["code"] == code
    assert body["error"]["type"] == error_type
    assert KEY not in reply.raw.decode()
    assert reply.headers["x-request-id"].startswith("req_")


def test_quota_fault_sends_no_retry_after() -> None:
    reply = post_once("quota")
    assert reply.json()["error"]["message"].startswith("You exceeded your current quota")
    assert "Retry-After" not in reply.headers


def test_forced_drop_closes_the_connection_without_an_answer() -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        post_once("drop")


def test_forced_hang_outlasts_the_client_timeout() -> None:
    settings = SimulatorSettings(faults=FaultRates(hang_s=30))

    async def run(client: Client) -> None:
        await client.post("hang", timeout_s=0.02)

    with pytest.raises(TimeoutError):
        scenario(settings, run)


def test_hang_shorter_than_the_timeout_then_answers_normally() -> None:
    settings = SimulatorSettings(faults=FaultRates(hang_s=0.001))
    reply = post_once("hang", settings)
    assert reply.status == 200
    RESPONSE_SCHEMA.validate(reply.json())


def test_forced_truncate_is_200_with_half_a_body_that_is_not_json() -> None:
    async def run(client: Client) -> tuple[Reply, Reply]:
        return await client.post("truncate"), await client.post()

    cut, whole = scenario(SimulatorSettings(), run)
    assert cut.status == 200
    assert cut.headers["Content-Type"] == "application/json"
    assert cut.raw.startswith(b'{"id":"chatcmpl-')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(cut.raw)
    # Same prompt, same reply: only the id differs in length-neutral ways.
    assert len(cut.raw) == len(whole.raw) // 2


@pytest.mark.parametrize("header", ["504", "timeout", "", "drop,hang"])
def test_unknown_fault_name_is_400(header: str) -> None:
    reply = post_once(header)
    assert reply.status == 400
    body = reply.json()
    ERROR_SCHEMA.validate(body)
    assert body["error"]["code"] == "invalid_value"
    assert "x-batchib-fault" in body["error"]["message"]


def test_fault_is_per_attempt_so_a_retry_succeeds() -> None:
    async def run(client: Client) -> list[int]:
        return [(await client.post(fault)).status for fault in ("503", None)]

    assert scenario(SimulatorSettings(), run) == [503, 200]


def test_faulted_request_is_charged_and_carries_ratelimit_headers() -> None:
    settings = SimulatorSettings(rpm=10)

    async def run(client: Client) -> list[Reply]:
        return [await client.post("500"), await client.post()]

    faulted, ok = scenario(settings, run)
    assert faulted.headers["x-ratelimit-remaining-requests"] == "9"
    assert ok.headers["x-ratelimit-remaining-requests"] == "8"


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("drop", Fault.DROP), (" Hang ", Fault.HANG), ("401", Fault.KEY_REVOKED)],
)
def test_forced_fault_header_parses_names(header: str | None, expected: Fault | None) -> None:
    assert forced_fault(header) == expected


# --- at random --------------------------------------------------------------------------


def statuses_with_random_500s(seed: int, count: int) -> list[int]:
    settings = SimulatorSettings(seed=seed, faults=FaultRates(error_500=0.5))

    async def run(client: Client) -> list[int]:
        return [(await client.post()).status for _ in range(count)]

    return scenario(settings, run)


def test_random_500s_follow_the_rate_and_repeat_with_the_seed() -> None:
    first = statuses_with_random_500s(seed=11, count=200)
    counts = Counter(first)
    assert set(counts) == {200, 500}
    # Binomial(200, 0.5): mean 100, sd ~7; 70..130 is over four sd either side.
    assert 70 <= counts[500] <= 130
    assert statuses_with_random_500s(seed=11, count=200) == first
    assert statuses_with_random_500s(seed=12, count=200) != first


def test_injector_picks_each_fault_in_proportion_to_its_rate() -> None:
    rates = FaultRates(error_503=0.2, drop=0.1, truncate=0.3)
    injector = FaultInjector(rates, seed=5)
    counts = Counter(injector.draw() for _ in range(20_000))
    assert set(counts) == {None, Fault.ERROR_503, Fault.DROP, Fault.TRUNCATE}
    for fault, rate in [(Fault.ERROR_503, 0.2), (Fault.DROP, 0.1), (Fault.TRUNCATE, 0.3)]:
        assert counts[fault] / 20_000 == pytest.approx(rate, abs=0.02)


def test_forcing_a_fault_does_not_shift_the_random_sequence() -> None:
    rates = FaultRates(error_500=0.5)
    plain = FaultInjector(rates, seed=1)
    forced = FaultInjector(rates, seed=1)
    expected = [plain.draw() for _ in range(50)]
    got = [forced.draw(Fault.QUOTA if i == 3 else None) for i in range(50)]
    assert got[3] is Fault.QUOTA
    assert got[:3] + got[4:] == expected[:3] + expected[4:]


def test_rates_adding_up_to_one_fault_every_attempt() -> None:
    injector = FaultInjector(FaultRates(error_500=0.7, error_502=0.2, quota=0.1), seed=0)
    assert all(injector.draw() is not None for _ in range(1000))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"error_500": -0.1},
        {"drop": 1.5},
        {"hang": 0.6, "truncate": 0.6},
        {"revoke_after": -1},
        {"hang_s": -1.0},
        {"hang_s": float("nan")},
    ],
)
def test_fault_rates_reject_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultRates(**kwargs)


# --- revoked keys -----------------------------------------------------------------------


def test_key_is_revoked_after_n_accepted_requests() -> None:
    settings = SimulatorSettings(faults=FaultRates(revoke_after=2))

    async def run(client: Client) -> list[Reply]:
        return [
            await client.post(),
            await client.post(),
            await client.post(),
            await client.post(),
            await client.post(key="sk-another-key"),
        ]

    replies = scenario(settings, run)
    assert [reply.status for reply in replies] == [200, 200, 401, 401, 200]
    revoked = replies[2].json()
    ERROR_SCHEMA.validate(revoked)
    assert revoked["error"] == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


def test_requests_refused_by_rate_limits_do_not_count_towards_revocation() -> None:
    now = [0.0]
    settings = SimulatorSettings(rpm=1, faults=FaultRates(revoke_after=2))

    async def run(client: Client) -> list[int]:
        statuses = [(await client.post()).status for _ in range(2)]
        now[0] += 60  # one request refilled
        statuses += [(await client.post()).status for _ in range(2)]
        return statuses

    assert scenario(settings, run, clock=lambda: now[0]) == [200, 429, 200, 401]


# --- the command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-500", "0.6", "--fail-503", "0.6"], "add up to at most 1"),
        (["--rpm", "10", "--burst-s", "1"], "too short"),
        (["--drop", "2"], "0<=x<=1"),
    ],
)
def test_cli_rejects_impossible_fault_and_limit_settings(args: list[str], message: str) -> None:
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 2
    assert message in result.output


def test_cli_help_lists_the_gateway_options() -> None:
    result = CliRunner().invoke(simulate, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--rpm",
        "--tpm",
        "--burst-s",
        "--no-rate-headers",
        "--fail-500",
        "--fail-502",
        "--fail-503",
        "--drop",
        "--hang",
        "--hang-s",
        "--truncate",
        "--quota",
        "--revoke-after",
        "--log",
    ):
        assert option in result.output
