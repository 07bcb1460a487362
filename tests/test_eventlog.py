"""Logs for cron: JSON events (start, progress, end) or text lines, on stderr, no key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from batchib.simulator import SimulatorSettings
from tests.conftest import ENV_TO_CLEAR, CliRun


def test_json_log_format_is_one_object_per_event_and_never_the_key(
    sample: Callable[[str], Path],
    run_batchib: Callable[..., CliRun],
    start_simulator: Callable[..., str],
    api_key: str,
) -> None:
    url = start_simulator(SimulatorSettings(latency_ms=40, latency_spread=0.0))

    run = run_batchib(
        sample("prompts.jsonl"), "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url,
        "-c", "4", "--log-format", "json", "--log-every", "0.1",
    )  # fmt: skip

    assert run.status == 0, run.stderr
    events = [json.loads(line) for line in run.stderr.splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("progress") >= 2
    assert events[-1]["counts"]["succeeded"] == 60 and events[-1]["exit_status"] == 0
    progress = [event for event in events if event["event"] == "progress"]
    assert progress == sorted(progress, key=lambda event: event["succeeded"])
    assert api_key not in run.stderr + run.stdout


def test_without_a_terminal_text_progress_lines_replace_the_bar(
    sample: Callable[[str], Path],
    run_batchib: Callable[..., CliRun],
    start_simulator: Callable[..., str],
) -> None:
    url = start_simulator(SimulatorSettings(latency_ms=40, latency_spread=0.0))

    run = run_batchib(
        sample("prompts.jsonl"), "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url,
        "-c", "4", "--log-every", "0.1",
    )  # fmt: skip

    assert run.status == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0].startswith("batchib: started: ")
    assert any(" succeeded, " in line and "req/s" in line for line in lines[1:])
    assert "\r" not in run.stderr  # no progress bar redrawing itself
    assert any(line.startswith("batchib: completed (exit 0)") for line in lines)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_run_whose_stderr_reader_is_gone_finishes_with_its_own_exit_status(
    log_format: str,
    sample: Callable[[str], Path],
    start_simulator: Callable[..., str],
    api_key: str,
    tmp_path: Path,
) -> None:
    url = start_simulator(SimulatorSettings(latency_ms=40, latency_spread=0.0))
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -1` does once it has its line: every write fails
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
    env["BATCHIB_API_KEY"] = api_key
    try:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "batchib", "run", sample("prompts.jsonl")),
                *("-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url, "-c", "4"),
                *("--log-every", "0.05", "--log-format", log_format),
            ],
            cwd=tmp_path,
            env=env,
            stderr=write_end,
            stdout=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)

    assert done.returncode == 0
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert (summary["status"], summary["counts"]["succeeded"]) == ("completed", 60)
