"""`batchib run` end to end: a subprocess against the simulator on loopback."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchib.inputs import shard_of
from batchib.parseproc import usable_cpus, wanted
from batchib.simulator import SimulatorSettings
from batchib.version import __version__

SAMPLE_FILES = ("prompts.jsonl", "chat_bodies.jsonl", "batch_api.jsonl")
MODEL = "gpt-5.4-mini"


def input_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def write_prompts(path: Path, count: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": f"p-{i:03d}", "prompt": f"Tell me fact number {i}."}) + "\n"
            for i in range(count)
        )
    )
    return path


def token_sums(
    records: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]
) -> dict[str, dict[str, int]]:
    """Usage added up per key(record), in the summary's shape."""
    sums: dict[str, Counter[str]] = {}
    for record in records:
        usage = record["response"]["body"]["usage"]
        figures = sums.setdefault(key(record), Counter())
        figures["requests"] += 1
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            figures[name] += usage[name]
        figures["cached_tokens"] += usage["prompt_tokens_details"]["cached_tokens"]
        figures["reasoning_tokens"] += usage["completion_tokens_details"]["reasoning_tokens"]
    return {name: dict(figures) for name, figures in sums.items()}


# --- the samples ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_sample_runs_with_one_schema_valid_line_per_request(
    name, sample, run_batchib, start_recording_simulator, validate, api_key
):
    gateway = start_recording_simulator()
    source = sample(name)

    run = run_batchib(source, "-o", "out.jsonl", "--model", MODEL, "--base-url", gateway.url)

    assert run.status == 0, run.stderr
    lines = input_lines(source)
    records = run.records()
    assert len(records) == len(lines)
    assert len({r["custom_id"] for r in records}) == len(lines)
    for record in records:
        validate("BatchRequestOutput", record)
        assert record["error"] is None
        assert record["response"]["status_code"] == 200
        assert record["batchib"]["status"] == "succeeded"
        validate("CreateChatCompletionResponse_lenient", record["response"]["body"])
    assert len(gateway.requests) == len(lines)
    for request in gateway.requests:
        assert (request.method, request.path) == ("POST", "/v1/chat/completions")
        assert request.headers["authorization"] == f"Bearer {api_key}"
        assert request.headers["user-agent"] == f"batchib/{__version__}"
        validate("CreateChatCompletionRequest", request.json())


def test_summary_totals_equal_the_sums_over_the_output_lines(
    sample, run_batchib, start_simulator, tmp_path
):
    url = start_simulator()
    inputs = [sample(name) for name in SAMPLE_FILES]
    ledger = tmp_path / "usage.jsonl"

    run = run_batchib(
        *inputs, "-o", "out.jsonl", "--model", MODEL, "--base-url", url, "--usage-log", ledger
    )

    assert run.status == 0, run.stderr
    records = run.records()
    summary = run.summary()
    assert summary["exit_status"] == 0
    assert summary["status"] == "completed"
    assert summary["stop"] is None
    counts = summary["counts"]
    assert counts["succeeded"] == counts["sent"] == len(records)
    assert counts["failed"] == counts["invalid_lines"] == counts["not_sent"] == 0
    assert counts["lines"] == sum(len(input_lines(path)) for path in inputs)

    total = token_sums(records, lambda record: "total")["total"]
    assert summary["usage"]["total"] == total
    assert summary["usage"]["by_served_model"] == token_sums(
        records, lambda record: record["batchib"]["served_model"]
    )
    assert summary["usage"]["by_requested_model"] == token_sums(
        records, lambda record: record["batchib"]["requested_model"]
    )
    # The served (dated) model is the one in the response body, and differs from the alias.
    for record in records:
        assert record["batchib"]["served_model"] == record["response"]["body"]["model"]
        assert record["batchib"]["served_model"] != record["batchib"]["requested_model"]
    finish_reasons = Counter(
        choice["finish_reason"]
        for record in records
        for choice in record["response"]["body"]["choices"]
    )
    assert summary["finish_reasons"] == dict(finish_reasons)
    assert set(finish_reasons) == {"stop", "length"}  # the samples exercise both

    assert [json.loads(line) for line in ledger.read_text().splitlines()] == [summary]


def test_usage_log_gets_one_line_per_run(sample, run_batchib, start_simulator, tmp_path):
    url = start_simulator()
    source = sample("batch_api.jsonl")
    ledger = tmp_path / "usage.jsonl"
    args = (source, "-o", "out.jsonl", "--base-url", url, "--usage-log", ledger)

    first = run_batchib(*args)
    first_summary = first.summary()
    second = run_batchib(*args)

    assert (first.status, second.status) == (0, 0)
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert entries == [first_summary, second.summary()]


# --- bad lines --------------------------------------------------------------------------


def test_bad_lines_become_error_records_and_the_good_lines_succeed(
    sample, run_batchib, start_recording_simulator, validate
):
    gateway = start_recording_simulator()
    source = sample("bad_lines.jsonl")

    run = run_batchib(source, "-o", "out.jsonl", "--model", MODEL, "--base-url", gateway.url)

    assert run.status == 3, run.stderr
    records = run.records()
    for record in records:
        validate("BatchRequestOutput", record)
    invalid = {r["batchib"]["line"]: r for r in records if r["batchib"]["status"] == "invalid"}
    assert {line: r["error"]["code"] for line, r in invalid.items()} == {
        2: "invalid_json",
        3: "not_an_object",
        4: "unknown_shape",
        5: "empty_messages",
        6: "stream_not_supported",
        7: "unsupported_url",
        8: "duplicate_custom_id",
    }
    for line, record in invalid.items():
        assert record["response"] is None
        assert record["batchib"]["file"] == str(source)
        assert record["error"]["message"].startswith(f"{source}:{line}: ")
    succeeded = {r["custom_id"]: r["batchib"]["line"] for r in records if r["error"] is None}
    assert succeeded == {"ok-1": 1, "ok-2": 10}
    assert len(records) == len(invalid) + len(succeeded)
    assert len(gateway.requests) == 2
    summary = run.summary()
    assert summary["exit_status"] == 3
    assert summary["counts"]["invalid_lines"] == 7
    assert summary["counts"]["succeeded"] == 2


# --- defaults ---------------------------------------------------------------------------


def test_defaults_fill_what_a_line_leaves_out_and_never_override_it(
    tmp_path, run_batchib, start_recording_simulator
):
    gateway = start_recording_simulator()
    source = tmp_path / "in.jsonl"
    lines = [
        {"id": "bare", "prompt": "line A"},
        {
            "id": "full",
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "own system"},
                {"role": "user", "content": "line B"},
            ],
            "max_tokens": 5,
            "temperature": 0.1,
            "seed": 1,
        },
        {
            "id": "developer",
            "messages": [
                {"role": "developer", "content": "own developer"},
                {"role": "user", "content": "line C"},
            ],
            "max_completion_tokens": 9,
        },
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))

    run = run_batchib(
        source,
        "-o",
        "out.jsonl",
        "--base-url",
        gateway.url,
        "--model",
        MODEL,
        "--system",
        "default system",
        "--max-tokens",
        "12",
        "--temperature",
        "0.5",
        "--param",
        "seed=7",
    )

    assert run.status == 0, run.stderr
    bodies = {body["messages"][-1]["content"]: body for body in gateway.bodies()}
    assert bodies["line A"] == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "default system"},
            {"role": "user", "content": "line A"},
        ],
        "max_tokens": 12,
        "temperature": 0.5,
        "seed": 7,
    }
    assert bodies["line B"] == {key: value for key, value in lines[1].items() if key != "id"}
    assert bodies["line C"] == {
        "model": MODEL,
        "messages": lines[2]["messages"],
        "max_completion_tokens": 9,
        "temperature": 0.5,
        "seed": 7,
    }


# --- usage and configuration errors -----------------------------------------------------


def test_missing_key_aborts_naming_the_variable_and_writes_nothing(
    sample, run_batchib, closed_port_url, tmp_path
):
    run = run_batchib(
        sample("prompts.jsonl"), "-o", "out.jsonl", "--base-url", closed_port_url, key=None
    )

    assert run.status == 1
    assert "BATCHIB_API_KEY" in run.stderr
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "out.jsonl.summary.json").exists()


def test_missing_input_aborts_naming_the_file(run_batchib, closed_port_url, tmp_path):
    run = run_batchib("no-such-input.jsonl", "-o", "out.jsonl", "--base-url", closed_port_url)

    assert run.status == 1
    assert "no-such-input.jsonl" in run.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("param", ["seed=notjson", "seed", "=7", "temperature={", "stream=true"])
def test_bad_param_is_a_usage_error(param, sample, run_batchib, closed_port_url, tmp_path):
    run = run_batchib(
        sample("prompts.jsonl"), "-o", "out.jsonl", "--base-url", closed_port_url, "--param", param
    )

    assert run.status == 2
    assert "--param" in run.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("-o", "r.jsonl", "--summary", "r.jsonl"), "--summary r.jsonl is also the output r.jsonl"),
        (("-o", "r.jsonl", "--summary", "in.jsonl"), "--summary in.jsonl is also the input"),
        (("-o", "r.jsonl", "--summary", "r.jsonl.lock"), "is also the output's lock"),
        (("-o", "r.jsonl", "--usage-log", "in.jsonl"), "--usage-log in.jsonl is also the input"),
        (("-o", "r.jsonl", "--usage-log", "r.jsonl.summary.json"), "is also --summary"),
        (
            (
                "-o",
                "in.jsonl",
            ),
            "the output in.jsonl is also the input",
        ),
        (("./in.jsonl", "-o", "r.jsonl"), "the input ./in.jsonl is given more than once"),
        (("-o", "-"), "would write a file named '-'"),
    ],
)
def test_a_file_the_run_writes_may_not_be_another_it_writes_or_reads(
    args, says, run_batchib, closed_port_url, tmp_path
):
    source = write_prompts(tmp_path / "in.jsonl", 3)
    before = source.read_bytes()

    run = run_batchib(source.name, *args, "--base-url", closed_port_url)

    assert run.status == 2, run.stderr
    assert says in run.stderr
    assert source.read_bytes() == before
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("option", ["--summary", "--usage-log"])
def test_a_summary_or_log_that_cannot_be_written_stops_the_run_before_it_sends(
    option, run_batchib, start_recording_simulator, tmp_path
):
    gateway = start_recording_simulator()
    source = write_prompts(tmp_path / "in.jsonl", 3)

    run = run_batchib(
        source, "-o", "r.jsonl", option, "missing-dir/s.json", "--base-url", gateway.url
    )

    assert run.status == 1, run.stderr
    assert "missing-dir is not a directory" in run.stderr
    assert gateway.requests == []
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("parser", ["inline", "process"])
def test_an_input_that_fails_mid_run_sends_what_was_read_then_stops_with_a_summary(
    parser, run_batchib, start_recording_simulator, tmp_path
):
    if parser == "process" and not wanted(None, usable_cpus()):
        pytest.skip("the parser process runs on Linux with 2+ CPUs")
    gateway = start_recording_simulator()
    good = write_prompts(tmp_path / "good.jsonl", 10)
    # /proc/self/mem: a regular file whose reading fails (EIO), after the good lines.
    args = ("-o", "out.jsonl", "--model", MODEL, "--base-url", gateway.url)

    run = run_batchib(good, "/proc/self/mem", *args, env={"BATCHIB_PARSER": parser})
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    rerun = run_batchib(good, *args)

    assert run.status == 1, run.stderr
    assert "cannot read the input" in run.stderr
    assert summary["stop"]["code"] == "input_error"
    assert summary["status"] == "stopped"
    assert summary["counts"]["succeeded"] == 10
    assert summary["counts"]["input_complete"] is False
    assert summary["input_parser"]["where"] == ("process" if parser == "process" else "event loop")
    assert rerun.status == 0, rerun.stderr
    assert len(gateway.requests) == 10


def priced_requests(stdout: str) -> int:
    """The TOTAL row's request count in the estimate table."""
    [total] = [line for line in stdout.splitlines() if line.startswith("TOTAL")]
    return int(total.split()[1].replace(",", ""))


def test_dry_run_prices_what_this_run_would_send(run_batchib, start_recording_simulator, tmp_path):
    gateway = start_recording_simulator()
    args = ("-o", "out.jsonl", "--model", MODEL, "--base-url", gateway.url)
    run_batchib(write_prompts(tmp_path / "in.jsonl", 10), *args)
    source = write_prompts(tmp_path / "in.jsonl", 15)  # five more lines since

    rest = run_batchib(source, *args, "--dry-run")
    afresh = run_batchib(source, *args, "--dry-run", "--overwrite")
    shard = run_batchib(source, *args, "--dry-run", "--overwrite", "--shard", "1/3")

    assert (rest.status, afresh.status, shard.status) == (0, 0, 0), rest.stderr
    assert priced_requests(rest.stdout) == 5
    assert "10 requests already succeeded in out.jsonl: not counted" in rest.stdout
    assert priced_requests(afresh.stdout) == 15
    in_shard = sum(1 for i in range(15) if shard_of(f"p-{i:03d}", 3) == 1)
    assert 0 < in_shard < 15
    assert priced_requests(shard.stdout) == in_shard
    assert len(gateway.requests) == 10  # the dry runs sent nothing


# --- stdin ------------------------------------------------------------------------------


def test_stdin_input_is_read_and_lines_without_id_get_a_positional_one(
    run_batchib, start_recording_simulator
):
    gateway = start_recording_simulator()
    text = (
        json.dumps({"id": "given", "prompt": "first"})
        + "\n\n"
        + json.dumps({"prompt": "third, after a blank line"})
        + "\n"
    )

    run = run_batchib(
        "-", "-o", "out.jsonl", "--model", MODEL, "--base-url", gateway.url, stdin=text.encode()
    )

    assert run.status == 0, run.stderr
    records = run.records()
    assert {r["custom_id"]: r["batchib"]["status"] for r in records} == {
        "given": "succeeded",
        "stdin:3": "succeeded",
    }
    assert len(gateway.requests) == 2


# --- answers from the gateway -----------------------------------------------------------


def test_unknown_model_fails_with_404_kept_and_is_not_retried(
    sample, run_batchib, start_recording_simulator, validate
):
    gateway = start_recording_simulator()
    source = sample("prompts.jsonl")
    # Fewer lines than the circuit breaker's window: each 404 is judged on its own.
    source.write_text("".join(source.read_text().splitlines(keepends=True)[:20]))

    run = run_batchib(source, "-o", "out.jsonl", "--model", "nope", "--base-url", gateway.url)

    assert run.status == 3, run.stderr
    records = run.records()
    assert len(records) == len(input_lines(source)) == len(gateway.requests)
    for record in records:
        validate("BatchRequestOutput", record)
        assert record["batchib"]["status"] == "failed"
        assert record["batchib"]["attempts"] == 1
        assert record["batchib"]["error_code"] == "model_not_found"
        assert record["response"]["status_code"] == 404
        validate("ErrorResponse", record["response"]["body"])
        assert record["response"]["body"]["error"]["code"] == "model_not_found"
    summary = run.summary()
    assert summary["counts"]["failed"] == len(records)
    assert summary["failures_by_code"] == {"model_not_found": len(records)}
    assert summary["retries"] == 0


def test_unknown_model_on_every_line_trips_the_circuit_breaker(
    sample, run_batchib, start_recording_simulator
):
    gateway = start_recording_simulator()
    source = sample("prompts.jsonl")

    run = run_batchib(source, "-o", "out.jsonl", "--model", "nope", "--base-url", gateway.url)

    assert run.status == 1, run.stderr
    assert "circuit breaker" in run.stderr
    assert "HTTP 404 model_not_found" in run.stderr
    summary = run.summary()
    assert summary["stop"]["code"] == "circuit_breaker"
    # Requests in flight when it tripped still finish; nothing new is sent after.
    assert 50 <= len(gateway.requests) <= 50 + 16
    assert len(run.records()) == len(gateway.requests)


def test_rejected_key_stops_the_run_and_a_rerun_with_the_right_key_completes_it(
    tmp_path, run_batchib, start_recording_simulator
):
    right_key = "sk-right-0123456789abcdef"
    gateway = start_recording_simulator(SimulatorSettings(require_key=right_key))
    source = write_prompts(tmp_path / "thirty.jsonl", 30)
    args = (source, "-o", "out.jsonl", "--model", MODEL, "--base-url", gateway.url, "-c", "2")

    stopped = run_batchib(*args)

    assert stopped.status == 1, stopped.stderr
    assert "rejected the API key" in stopped.stderr
    assert 0 < len(gateway.requests) < 30
    summary = stopped.summary()
    assert summary["exit_status"] == 1
    assert summary["stop"]["code"] == "invalid_api_key"
    assert summary["counts"]["not_sent"] > 0
    assert summary["counts"]["succeeded"] == 0

    resumed = run_batchib(*args, key=right_key)

    assert resumed.status == 0, resumed.stderr
    assert resumed.summary()["counts"]["succeeded"] == 30
    succeeded = {r["custom_id"] for r in resumed.records() if r["batchib"]["status"] == "succeeded"}
    assert succeeded == {f"p-{i:03d}" for i in range(30)}


def test_requests_in_flight_never_exceed_concurrency(
    sample, run_batchib, start_recording_simulator
):
    gateway = start_recording_simulator(SimulatorSettings(latency_ms=20))

    run = run_batchib(
        sample("prompts.jsonl"),
        "-o",
        "out.jsonl",
        "--model",
        MODEL,
        "--base-url",
        gateway.url,
        "-c",
        "4",
    )

    assert run.status == 0, run.stderr
    assert len(gateway.requests) == 60
    assert gateway.peak_in_flight <= 4
    # The limit is reached, so the test shows something: 60 requests of 10-30 ms each.
    assert gateway.peak_in_flight > 1


@pytest.mark.parametrize("choice", ["default", "asyncio"])
def test_the_summary_names_the_event_loop_the_run_went_on(
    choice, sample, run_batchib, start_simulator, tmp_path
):
    # uvloop when installed (the test extra installs it, as `batchib[fast]` does), unless
    # BATCHIB_EVENT_LOOP=asyncio; the run's results are the same either way.
    url = start_simulator()
    env = {} if choice == "default" else {"BATCHIB_EVENT_LOOP": "asyncio"}
    run = run_batchib(
        sample("prompts.jsonl"), "-o", "out.jsonl", "--model", MODEL, "--base-url", url, env=env
    )
    assert run.status == 0, run.stderr
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    expected = "uvloop" if choice == "default" else "asyncio"
    assert summary["event_loop"] == expected
    assert summary["counts"]["succeeded"] == summary["counts"]["lines"] > 0


def test_dry_run_with_an_unreadable_output_says_so_without_a_traceback(run_batchib, tmp_path):
    source = write_prompts(tmp_path / "in.jsonl", 3)

    run = run_batchib(source, "-o", "/proc/self/mem", "--model", MODEL, "--dry-run")

    assert run.status == 1
    assert "cannot read the results /proc/self/mem" in run.stderr
    assert "Traceback" not in run.stderr
