"""batchib against the simulator behaving like a real gateway: limits announced in
headers, faults injected per attempt, a key revoked mid-run. Judged from both sides:
the results file and summary, and the simulator's own request log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchib.simulator import SimulatorSettings
from batchib.simulator.settings import FaultRates
from tests.conftest import CliRun, read_jsonl


def write_prompts(path: Path, count: int) -> Path:
    lines = [json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def server_log(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path)


def successes(run: CliRun) -> list[dict[str, Any]]:
    return [r for r in run.records() if r["batchib"]["status"] == "succeeded"]


def test_limits_announced_in_headers_are_adopted_without_429s(
    tmp_path: Path, start_simulator: Callable[..., str], run_batchib: Callable[..., CliRun]
) -> None:
    log = tmp_path / "server.jsonl"
    # A bucket of one second's worth: any burst beyond 100/s would be refused.
    url = start_simulator(SimulatorSettings(rpm=6000, burst_s=1.0, log_path=log))
    source = write_prompts(tmp_path / "in.jsonl", 150)

    run = run_batchib(
        source, "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url, "-c", "32"
    )

    assert run.status == 0, run.stderr
    summary = run.summary()
    assert summary["limits_at_end"]["requests_per_minute"] == 6000
    assert summary["rate_limited_429"] == 0
    assert [e["status"] for e in server_log(log)].count(429) == 0
    assert len(successes(run)) == 150


def test_faults_are_retried_until_every_request_succeeds_once(
    tmp_path: Path, start_simulator: Callable[..., str], run_batchib: Callable[..., CliRun]
) -> None:
    log = tmp_path / "server.jsonl"
    # One attempt in five fails. Rarer faults keep the test short: the retries back off
    # from 0.5 s, doubling, and at 0.4 a run of five or six failures in a row (15-31 s)
    # came up in most runs.
    faults = FaultRates(error_500=0.05, error_503=0.05, drop=0.05, truncate=0.05)
    url = start_simulator(SimulatorSettings(faults=faults, seed=3, log_path=log))
    source = write_prompts(tmp_path / "in.jsonl", 100)

    run = run_batchib(
        source, "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url,
        "--max-attempts", "10", "-c", "8",
    )  # fmt: skip

    assert run.status == 0, run.stderr
    records = successes(run)
    assert sorted(r["custom_id"] for r in records) == sorted(f"q{i}" for i in range(100))
    received = server_log(log)
    assert {e["fault"] for e in received} >= {"500", "503", "drop", "truncate"}
    summary = run.summary()
    # Every attempt reached the server and is counted; every retry too.
    assert summary["attempts"] == len(received) > 100
    assert summary["retries"] == len(received) - 100
    assert sum(r["batchib"]["attempts"] for r in records) == len(received)
    # Each success written is a clean 200 in the server's log, for the same body.
    clean = {e["body_sha256"] for e in received if e["status"] == 200 and e["fault"] is None}
    assert {r["batchib"]["body_hash"] for r in records} == clean


def test_a_key_revoked_mid_run_stops_it_and_a_rerun_sends_only_the_rest(
    tmp_path: Path, start_simulator: Callable[..., str], run_batchib: Callable[..., CliRun]
) -> None:
    log = tmp_path / "server.jsonl"
    url = start_simulator(SimulatorSettings(faults=FaultRates(revoke_after=20), log_path=log))
    source = write_prompts(tmp_path / "in.jsonl", 80)
    args = (source, "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url, "-c", "4")

    first = run_batchib(*args, key="sk-test-first-key-0001")

    assert first.status == 1, first.stderr
    assert "rejected the API key" in first.stderr
    assert first.summary()["stop"]["code"] == "invalid_api_key"
    done_first = {r["batchib"]["body_hash"] for r in successes(first)}
    assert len(done_first) == 20
    after_revocation = [e for e in server_log(log) if e["status"] == 401]
    assert len(after_revocation) <= 4  # only what was already in flight

    second = run_batchib(*args, key="sk-test-second-key-0002")

    assert second.status == 0, second.stderr
    second_key_requests = [e for e in server_log(log) if e["key"] != after_revocation[0]["key"]]
    assert len(second_key_requests) == 60
    assert not {e["body_sha256"] for e in second_key_requests} & done_first
    assert {r["custom_id"] for r in successes(second)} == {f"q{i}" for i in range(80)}
