"""Ctrl-C and SIGTERM on a real `batchib run` process: what finished is written, the
summary says why it stopped, and a rerun sends only what did not succeed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from batchib.simulator import SimulatorSettings, create_app
from tests.conftest import ENV_TO_CLEAR, read_jsonl

PROMPTS = 100


class CountingGateway:
    """The simulator, counting received requests and signalling once `wake_at` arrived."""

    def __init__(self, latency_ms: float, wake_at: int) -> None:
        self.received: list[str] = []
        self.reached = threading.Event()
        self.wake_at = wake_at
        self.app = create_app(SimulatorSettings(latency_ms=latency_ms, latency_spread=0.0))
        self.app.middlewares.insert(0, self.middleware)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.received.append(body["messages"][-1]["content"])
        if len(self.received) >= self.wake_at:
            self.reached.set()
        return await handler(request)


def write_prompts(path: Path) -> Path:
    lines = [json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) for i in range(PROMPTS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_run(
    tmp_path: Path, url: str, key: str, *extra: str, concurrency: int = 4
) -> subprocess.Popen[bytes]:
    """`batchib run in.jsonl -o out.jsonl` in the background, in tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
    env["BATCHIB_API_KEY"] = key
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "batchib", "run", "in.jsonl", "-o", "out.jsonl"),
            *("--model", "gpt-5.4", "--base-url", url, "-c", str(concurrency), *extra),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def summary(tmp_path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    return result


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_signal_writes_what_finished_and_a_rerun_sends_only_the_rest(
    signum: int,
    status: int,
    tmp_path: Path,
    start_app: Callable[[web.Application], str],
    api_key: str,
) -> None:
    write_prompts(tmp_path / "in.jsonl")
    gateway = CountingGateway(latency_ms=100, wake_at=4)
    url = start_app(gateway.app)
    process = start_run(tmp_path, url, api_key, "--grace", "10")
    assert gateway.reached.wait(timeout=30)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == status, stderr.decode()
    assert b"interrupted" in stderr
    first = read_jsonl(tmp_path / "out.jsonl")  # every line parses
    first_summary = summary(tmp_path)
    assert first_summary["status"] == "interrupted"
    assert first_summary["exit_status"] == status
    # Requests in flight were allowed to finish within the grace period.
    assert len(first) == first_summary["counts"]["succeeded"] >= 4
    assert first_summary["counts"]["not_sent"] + (PROMPTS - first_summary["counts"]["lines"]) > 0
    sent_first = len(gateway.received)
    assert sent_first < PROMPTS

    rerun = start_run(tmp_path, url, api_key)
    _, stderr = rerun.communicate(timeout=60)

    assert rerun.returncode == 0, stderr.decode()
    records = read_jsonl(tmp_path / "out.jsonl")
    succeeded = {r["custom_id"] for r in records if r["batchib"]["status"] == "succeeded"}
    assert succeeded == {f"q{i}" for i in range(PROMPTS)}
    assert len(records) == PROMPTS  # nothing paid for twice
    assert len(gateway.received) - sent_first == PROMPTS - len(first)
    assert summary(tmp_path)["counts"]["skipped_already_done"] == len(first)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_second_sigint_cancels_requests_in_flight_at_once(
    log_format: str, tmp_path: Path, start_app: Callable[[web.Application], str], api_key: str
) -> None:
    write_prompts(tmp_path / "in.jsonl")
    gateway = CountingGateway(latency_ms=60_000, wake_at=4)
    url = start_app(gateway.app)
    process = start_run(
        tmp_path, url, api_key, "--grace", "600", "--log-format", log_format,
        "--max-total-tokens", "10000000", "--max-tokens", "50",
    )  # fmt: skip
    assert gateway.reached.wait(timeout=30)
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    process.send_signal(signal.SIGINT)
    # Two signals sent together may arrive as one: wait until the first was handled.
    assert process.stderr is not None
    while b"interrupt again" not in (line := process.stderr.readline()):
        assert line, "the process ended without acknowledging the interrupt"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    watchdog.cancel()

    assert process.returncode == 130, stderr.decode()
    assert b"stopping now" in stderr
    if log_format == "json":  # every line an event, the interruptions too
        events = [json.loads(line) for line in stderr.splitlines()]
        assert [e["event"] for e in events] == ["interrupt", "end"]
        assert events[0]["message"] == "stopping now"
    assert read_jsonl(tmp_path / "out.jsonl") == []
    figures = summary(tmp_path)
    counts = figures["counts"]
    # The four cut off were sent: counted so, and their worst case spent from the budget.
    assert len(gateway.received) == 4
    assert (counts["succeeded"], counts["cancelled_in_flight"], figures["attempts"]) == (0, 4, 4)
    assert counts["not_sent"] == counts["lines"] - 4
    assert figures["budget"]["spent_tokens"] > 4 * 50


def test_kill_9_loses_nothing_written_and_a_rerun_resends_only_what_was_in_flight(
    tmp_path: Path,
    start_app: Callable[[web.Application], str],
    api_key: str,
) -> None:
    write_prompts(tmp_path / "in.jsonl")
    gateway = CountingGateway(latency_ms=50, wake_at=30)
    url = start_app(gateway.app)
    process = start_run(tmp_path, url, api_key)
    assert gateway.reached.wait(timeout=30)
    process.kill()
    process.communicate(timeout=30)
    # Whatever reached the file is whole records (a torn tail is set aside by the rerun).
    written = {
        json.loads(line)["custom_id"]
        for line in (tmp_path / "out.jsonl").read_bytes().splitlines()
        if line.endswith(b"}")
    }
    sent_first = list(gateway.received)

    rerun = start_run(tmp_path, url, api_key)
    _, stderr = rerun.communicate(timeout=60)

    assert rerun.returncode == 0, stderr.decode()
    resent = gateway.received[len(sent_first) :]
    prompts_written = {f"question {custom_id[1:]}" for custom_id in written}
    assert not prompts_written & set(resent)  # nothing written is paid for again
    # Only requests in flight at the kill (at most -c 4) were sent twice.
    assert len(resent) - (PROMPTS - len(set(sent_first))) <= 4
    records = read_jsonl(tmp_path / "out.jsonl")
    assert {r["custom_id"] for r in records} == {f"q{i}" for i in range(PROMPTS)}
