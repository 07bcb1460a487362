"""`batchib compact` and `batchib report` on results files written by real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchib.compact import compact
from batchib.report import report
from tests.conftest import CliRun, RecordingGateway, read_jsonl


def record(custom_id: str, ok: bool, tokens: int = 10, **own: Any) -> dict[str, Any]:
    body = {
        "model": "served-1",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {}}],
        "usage": {"prompt_tokens": tokens, "completion_tokens": 1, "total_tokens": tokens + 1},
    }
    return {
        "id": "batch_req_x",
        "custom_id": custom_id,
        "response": {"status_code": 200 if ok else 500, "request_id": "r", "body": body}
        if ok
        else {"status_code": 500, "request_id": "r", "body": {"error": {"code": "server_error"}}},
        "error": None,
        "batchib": {
            "status": "succeeded" if ok else "failed",
            "error_code": None if ok else "server_error",
            "attempts": 1,
            "requested_model": "alias",
            "latency_ms": 5.0,
            **own,
        },
    }


def write(path: Path, *lines: dict[str, Any] | bytes) -> Path:
    path.write_bytes(
        b"".join(
            line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n" for line in lines
        )
    )
    return path


def test_compact_keeps_the_latest_success_else_the_latest_failure(tmp_path: Path) -> None:
    path = write(
        tmp_path / "out.jsonl",
        record("a", False),
        record("a", True, tokens=1),
        record("b", False, attempts=1),
        record("a", True, tokens=2),
        record("a", False),
        record("b", False, attempts=2),
        b"not a record\n",
        record("c", True),
    )

    done = compact(path)

    kept = read_jsonl(path)
    assert [(r["custom_id"], r["batchib"]["status"]) for r in kept] == [
        ("a", "succeeded"),
        ("b", "failed"),
        ("c", "succeeded"),
    ]
    assert kept[0]["response"]["body"]["usage"]["prompt_tokens"] == 2  # the latest success
    assert kept[1]["batchib"]["attempts"] == 2  # the latest failure
    assert (done.lines_before, done.lines_after, done.set_aside) == (8, 3, 1)
    assert (tmp_path / "out.jsonl.torn").read_bytes() == b"not a record\n"


def test_compacting_twice_changes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "out.jsonl", record("a", True), record("a", True), record("b", False))
    compact(path)
    once = path.read_bytes()
    compact(path)

    assert path.read_bytes() == once


def test_report_counts_outcomes_once_and_every_paid_answer(tmp_path: Path) -> None:
    shard_1 = write(tmp_path / "s1.jsonl", record("a", False), record("a", True, tokens=3))
    shard_2 = write(
        tmp_path / "s2.jsonl",
        record("b", True, tokens=4),
        record("b", True, tokens=5),  # an edited line answered again: paid twice
        record("c", False),
    )

    summary = report([shard_1, shard_2])

    assert summary["counts"] == {
        "lines": 5,
        "unreadable_lines": 0,
        "requests": 3,
        "succeeded": 2,
        "failed": 1,
        "invalid_lines": 0,
        "successful_lines_paid": 3,
    }
    assert summary["usage"]["total"]["prompt_tokens"] == 12
    assert summary["usage"]["by_requested_model"]["alias"]["requests"] == 3
    assert summary["failures_by_code"] == {"server_error": 1}
    assert summary["status"] == "has_failures"


def test_report_of_a_finished_run_agrees_with_its_summary(
    tmp_path: Path,
    sample: Callable[[str], Path],
    run_batchib: Callable[..., CliRun],
    start_recording_simulator: Callable[..., RecordingGateway],
) -> None:
    gateway = start_recording_simulator()
    run = run_batchib(sample("batch_api.jsonl"), "-o", "out.jsonl", "--base-url", gateway.url)
    assert run.status == 0, run.stderr
    summary = run.summary()

    completed = subprocess.run(
        [sys.executable, "-m", "batchib", "report", "--json", "out.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    recomputed = json.loads(completed.stdout)
    assert recomputed["usage"] == summary["usage"]
    assert recomputed["finish_reasons"] == summary["finish_reasons"]
    assert recomputed["counts"]["succeeded"] == summary["counts"]["succeeded"]


def test_run_with_compact_leaves_one_line_per_id(
    tmp_path: Path,
    sample: Callable[[str], Path],
    run_batchib: Callable[..., CliRun],
    start_recording_simulator: Callable[..., RecordingGateway],
) -> None:
    gateway = start_recording_simulator()
    source = sample("batch_api.jsonl")
    args = (source, "-o", "out.jsonl", "--base-url", gateway.url)
    assert run_batchib(*args).status == 0
    lines = source.read_text().splitlines()
    lines[0] = lines[0].replace("Summarise", "Summarize")  # edited: sent again
    source.write_text("\n".join(lines) + "\n")

    rerun = run_batchib(*args, "--compact")

    assert rerun.status == 0, rerun.stderr
    ids = [r["custom_id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert sorted(ids) == sorted(json.loads(line)["custom_id"] for line in lines)


def test_shards_split_the_input_exactly_and_report_merges_them(
    tmp_path: Path,
    sample: Callable[[str], Path],
    run_batchib: Callable[..., CliRun],
    start_recording_simulator: Callable[..., RecordingGateway],
) -> None:
    gateway = start_recording_simulator()
    source = sample("prompts.jsonl")
    common = (source, "--model", "gpt-5.4-mini", "--base-url", gateway.url)

    shards = [run_batchib(*common, "-o", f"part{i}.jsonl", "--shard", f"{i}/3") for i in (1, 2, 3)]

    assert [run.status for run in shards] == [0, 0, 0]
    ids = [r["custom_id"] for run in shards for r in run.records()]
    assert sorted(ids) == sorted(json.loads(line)["id"] for line in source.read_text().splitlines())
    assert all(run.records() for run in shards)  # 60 ids do land in every shard
    merged = report([tmp_path / f"part{i}.jsonl" for i in (1, 2, 3)])
    assert merged["counts"]["succeeded"] == 60
    assert merged["usage"]["total"]["total_tokens"] == sum(
        run.summary()["usage"]["total"]["total_tokens"] for run in shards
    )


def test_a_bad_shard_is_a_usage_error(
    sample: Callable[[str], Path], run_batchib: Callable[..., CliRun], closed_port_url: str
) -> None:
    run = run_batchib(
        sample("prompts.jsonl"), "-o", "o.jsonl", "--base-url", closed_port_url, "--shard", "4/3"
    )

    assert run.status == 2
    assert "--shard" in run.stderr


def batchib_command(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchib", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_compact_refuses_a_file_with_no_results_and_leaves_it_alone(tmp_path: Path) -> None:
    prompts = write(tmp_path / "prompts.jsonl", {"id": "a", "prompt": "Hi"}, {"custom_id": "b"})
    before = prompts.read_bytes()

    done = batchib_command("compact", prompts, cwd=tmp_path)

    assert done.returncode == 1
    assert "holds no results" in done.stderr
    assert prompts.read_bytes() == before
    assert not (tmp_path / "prompts.jsonl.torn").exists()


def test_report_is_not_complete_while_some_lines_are_not_records(tmp_path: Path) -> None:
    clean = write(tmp_path / "clean.jsonl", record("a", True))
    torn = write(tmp_path / "torn.jsonl", record("a", True), b'{"custom_id": "b"}\n')

    assert report([clean])["status"] == "complete"
    summary = report([torn])
    assert summary["status"] == "has_failures"
    assert summary["counts"]["unreadable_lines"] == 1  # a custom_id alone is no record
    shown = batchib_command("report", torn, cwd=tmp_path)
    assert shown.returncode == 3
    assert "1 lines are not result records" in shown.stdout


def test_report_refuses_a_file_given_twice(tmp_path: Path) -> None:
    path = write(tmp_path / "out.jsonl", record("a", True))

    twice = batchib_command("report", path, f"./{path.name}", cwd=tmp_path)

    assert twice.returncode == 2
    assert "given more than once" in twice.stderr
