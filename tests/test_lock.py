"""One run per output file: a second run exits 75 at once (or waits with --wait-lock),
and a lock left by a killed run never blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from batchib.config import ApiKey, RunSettings
from batchib.errors import ConfigError
from batchib.lock import LockedError, OutputLock
from tests.conftest import CliRun
from tests.test_signals import CountingGateway, start_run, write_prompts


def start_cli(tmp_path: Path, url: str, key: str, *extra: str) -> subprocess.Popen[bytes]:
    return start_run(tmp_path, url, key, *extra, concurrency=2)


def a_run_holding_the_lock(
    tmp_path: Path, start_app: Callable[[web.Application], str], key: str
) -> tuple[subprocess.Popen[bytes], str]:
    """A run on in.jsonl -> out.jsonl that has sent its first request (so holds the
    lock), against a gateway slow enough to keep it going; and the gateway's URL."""
    write_prompts(tmp_path / "in.jsonl")
    gateway = CountingGateway(latency_ms=200, wake_at=1)
    url = start_app(gateway.app)
    first = start_cli(tmp_path, url, key)
    assert gateway.reached.wait(timeout=30)
    return first, url


def test_a_second_lock_on_the_same_output_is_refused_naming_the_holder(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    # A separate open file description conflicts even within one process.
    with (
        OutputLock(output),
        pytest.raises(LockedError, match=f"pid {os.getpid()}"),
        OutputLock(output),
    ):
        pass
    with OutputLock(output):  # released on exit: free again
        pass


def test_two_concurrent_runs_on_one_output_exactly_one_proceeds(
    tmp_path: Path,
    start_app: Callable[[web.Application], str],
    run_batchib: Callable[..., CliRun],
    api_key: str,
) -> None:
    first, url = a_run_holding_the_lock(tmp_path, start_app, api_key)

    second = run_batchib("in.jsonl", "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url)

    assert second.status == 75, second.stderr
    assert f"pid {first.pid}" in second.stderr
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)
    assert first.returncode == 130


def test_wait_lock_waits_for_the_holder_then_runs(
    tmp_path: Path,
    start_app: Callable[[web.Application], str],
    api_key: str,
) -> None:
    write_prompts(tmp_path / "in.jsonl")
    gateway = CountingGateway(latency_ms=20, wake_at=1)
    url = start_app(gateway.app)
    first = start_cli(tmp_path, url, api_key)
    assert gateway.reached.wait(timeout=30)
    second = start_cli(tmp_path, url, api_key, "--wait-lock")

    first.communicate(timeout=60)
    _, stderr = second.communicate(timeout=60)

    assert first.returncode == 0
    assert second.returncode == 0, stderr.decode()
    # The second run started after the first finished: everything was already done.
    assert b"100 already done" in stderr


def waiting_for_a_lock(pid: int, timeout_s: float = 30) -> bool:
    """Whether process `pid` comes to be blocked on a lock (a "->" line of /proc/locks)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open("/proc/locks") as locks:
            if any("->" in line and f" {pid} " in line for line in locks):
                return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_ctrl_c_while_waiting_for_the_lock_is_an_interruption(
    log_format: str,
    tmp_path: Path,
    start_app: Callable[[web.Application], str],
    api_key: str,
) -> None:
    first, url = a_run_holding_the_lock(tmp_path, start_app, api_key)
    second = start_cli(tmp_path, url, api_key, "--wait-lock", "--log-format", log_format)
    assert waiting_for_a_lock(second.pid)

    second.send_signal(signal.SIGINT)
    _, stderr = second.communicate(timeout=30)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)

    assert second.returncode == 130, stderr.decode()
    if log_format == "json":
        [event] = [json.loads(line) for line in stderr.decode().splitlines()]
        assert (event["event"], event["message"], event["exit_status"]) == (
            "error",
            "interrupted",
            130,
        )
    else:
        assert stderr.decode() == "batchib: error: interrupted\n"


def test_in_json_log_mode_a_refusal_is_a_json_event(
    tmp_path: Path,
    start_app: Callable[[web.Application], str],
    run_batchib: Callable[..., CliRun],
    api_key: str,
) -> None:
    first, url = a_run_holding_the_lock(tmp_path, start_app, api_key)

    locked = run_batchib(
        "in.jsonl", "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url,
        "--log-format", "json",
    )  # fmt: skip
    mixed = run_batchib(
        "in.jsonl", "-o", "other.jsonl", "--model", "gpt-5.4", "--base-url", url,
        "--log-format", "json", "--summary", "in.jsonl",
    )  # fmt: skip
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)

    [event] = [json.loads(line) for line in locked.stderr.splitlines()]
    assert (event["event"], event["exit_status"], locked.status) == ("error", 75, 75)
    assert f"pid {first.pid}" in event["message"]
    [event] = [json.loads(line) for line in mixed.stderr.splitlines()]
    assert (event["event"], event["exit_status"], mixed.status) == ("error", 2, 2)
    assert "--summary in.jsonl is also the input" in event["message"]


def test_a_lock_left_by_a_killed_run_does_not_block(
    tmp_path: Path,
    start_app: Callable[[web.Application], str],
    run_batchib: Callable[..., CliRun],
    api_key: str,
) -> None:
    first, url = a_run_holding_the_lock(tmp_path, start_app, api_key)
    first.kill()
    first.communicate(timeout=30)
    assert (tmp_path / "out.jsonl.lock").exists()

    rerun = run_batchib("in.jsonl", "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url)

    assert rerun.status == 0, rerun.stderr


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/v1", True),
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.5.0.1/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://api.example.com/v1", False),
        ("http://10.0.0.5/v1", False),
    ],
)
def test_plain_http_is_refused_beyond_loopback(url: str, allowed: bool) -> None:
    key = ApiKey("sk-test-insecure-0000")
    if allowed:
        RunSettings(api_key=key, base_url=url)
    else:
        with pytest.raises(ConfigError, match="plain http"):
            RunSettings(api_key=key, base_url=url)
        RunSettings(api_key=key, base_url=url, allow_insecure=True)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://api.example.com/v1?api-version=2024-10-21", "query"),
        ("https://api.example.com/v1#frag", "query or fragment"),
        ("https://api.example.com/v1/chat/completions", "not the endpoint"),
        ("https://api.example.com/v1/chat/completions/", "not the endpoint"),
    ],
)
def test_a_base_url_that_would_make_a_wrong_endpoint_is_refused(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as refused:
        RunSettings(api_key=ApiKey("sk-test-insecure-0000"), base_url=url)
    assert "2024-10-21" not in str(refused.value)  # a query is never echoed
    assert RunSettings(
        api_key=ApiKey("sk-test-insecure-0000"), base_url="https://api.example.com/v1/"
    ).completions_url == ("https://api.example.com/v1/chat/completions")


def test_insecure_base_url_is_a_usage_error_before_anything_is_sent(
    tmp_path: Path, run_batchib: Callable[..., CliRun]
) -> None:
    write_prompts(tmp_path / "in.jsonl")

    run = run_batchib("in.jsonl", "-o", "out.jsonl", "--base-url", "http://example.com/v1")

    assert run.status == 2
    assert "plain http" in run.stderr
    assert not (tmp_path / "out.jsonl").exists()
