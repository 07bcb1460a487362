"""`batchib estimate` and `run --dry-run`: validate and price without sending."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ENV_TO_CLEAR

ROOT = Path(__file__).resolve().parent.parent


def estimate(tmp_path: Path, *args: str | Path) -> tuple[int, Any, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}  # no key at all
    completed = subprocess.run(
        [sys.executable, "-m", "batchib", "estimate", *map(str, args), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.returncode, json.loads(completed.stdout or "null"), completed.stderr


def write_lines(path: Path, *lines: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_completion_bounds_and_costs_per_model(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        {"id": "a", "prompt": "Hi", "model": "gpt-4.1", "max_tokens": 100},
        {"id": "b", "prompt": "Hi", "model": "gpt-4.1", "max_completion_tokens": 50, "n": 2},
        {"id": "c", "prompt": "Hi", "model": "gpt-5.4"},
    )

    status, result, _ = estimate(
        tmp_path, source, "--expected-completion-tokens", "30",
        "--pricing", ROOT / "samples" / "pricing.toml",
    )  # fmt: skip

    assert status == 0
    gpt41 = result["by_model"]["gpt-4.1"]
    # min: one token per choice; expected: 30 per choice within the cap; max: the caps.
    assert gpt41["completion_tokens"] == {
        "min": 3,
        "expected": 30 + 60,
        "max": 100 + 100,
        "unbounded_requests": 0,
    }
    prompt = gpt41["prompt_tokens"]
    assert gpt41["cost_usd"]["max"] == pytest.approx((prompt * 2.0 + 200 * 8.0) / 1e6)
    assert gpt41["cost_usd"]["min"] == pytest.approx((prompt * 2.0 + 3 * 8.0) / 1e6)
    gpt54 = result["by_model"]["gpt-5.4"]
    assert gpt54["completion_tokens"]["max"] is None  # no cap and none assumed
    assert result["total"]["cost_usd"]["max"] is None
    assert result["total"]["completion_tokens"]["unbounded_requests"] == 1


def test_assumed_cap_bounds_lines_without_one(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", {"prompt": "Hi", "model": "gpt-5.4", "n": 3})

    _, result, _ = estimate(tmp_path, source, "--assume-max-tokens", "10")

    assert result["total"]["completion_tokens"]["max"] == 30


def test_estimate_reports_bad_lines_like_run_and_needs_no_key(tmp_path: Path) -> None:
    source = tmp_path / "bad_lines.jsonl"
    source.write_bytes((ROOT / "samples" / "bad_lines.jsonl").read_bytes())

    status, result, stderr = estimate(tmp_path, source, "--model", "gpt-5.4-mini")

    assert status == 3
    assert result["invalid_lines"] == 7
    assert [(e["line"], e["code"]) for e in result["invalid_examples"]] == [
        (2, "invalid_json"),
        (3, "not_an_object"),
        (4, "unknown_shape"),
        (5, "empty_messages"),
        (6, "stream_not_supported"),
        (7, "unsupported_url"),
        (8, "duplicate_custom_id"),
    ]
    assert f"{source}:2: not valid JSON" in stderr
    assert result["total"]["requests"] == 2


def test_wall_time_is_set_by_the_tightest_limit(tmp_path: Path) -> None:
    lines = [{"prompt": "Hi", "model": "m", "max_tokens": 10} for _ in range(120)]
    source = write_lines(tmp_path / "in.jsonl", *lines)

    _, by_rpm, _ = estimate(tmp_path, source, "--rpm", "60", "-c", "64", "--latency", "1")
    _, by_concurrency, _ = estimate(tmp_path, source, "-c", "2", "--latency", "1")

    assert by_rpm["total"]["wall_time_s"] == 120.0
    assert by_concurrency["total"]["wall_time_s"] == 60.0


def test_wall_time_is_never_shorter_than_one_request(tmp_path: Path) -> None:
    one = write_lines(tmp_path / "one.jsonl", {"prompt": "Hi", "model": "m"})
    sixty = write_lines(tmp_path / "sixty.jsonl", *[{"prompt": "Hi", "model": "m"}] * 60)

    _, alone, _ = estimate(tmp_path, one, "--latency", "10")
    _, one_wave, _ = estimate(tmp_path, sixty, "--latency", "10", "-c", "100")
    _, two_waves, _ = estimate(tmp_path, sixty, "--latency", "10", "-c", "59")

    assert alone["total"]["wall_time_s"] == 10.0
    assert one_wave["total"]["wall_time_s"] == 10.0
    assert two_waves["total"]["wall_time_s"] == 20.0


def test_wall_time_at_a_token_rate_counts_the_expected_replies(tmp_path: Path) -> None:
    # No caps: without an expected length the replies count nothing; with 90 tokens
    # expected, each request uses ten times the tokens, so the run takes ten times longer.
    source = write_lines(tmp_path / "in.jsonl", *[{"prompt": "x" * 36, "model": "m"}] * 61)

    _, unknown, _ = estimate(tmp_path, source, "--tpm", "600", "--latency", "0.1")
    _, known, _ = estimate(
        tmp_path, source, "--tpm", "600", "--latency", "0.1", "--expected-completion-tokens", "90"
    )

    prompt = unknown["total"]["prompt_tokens"] / 61
    assert unknown["total"]["wall_time_s"] == round(60 * prompt / 10 + 0.1, 1)
    assert known["total"]["wall_time_s"] == round(60 * (prompt + 90) / 10 + 0.1, 1)


def test_estimate_brackets_the_cost_of_the_run_and_counts_prompts_like_the_gateway(
    tmp_path: Path,
    start_simulator: Any,
    run_batchib: Any,
) -> None:
    # The simulator counts prompts with the same tokenizer, as a real gateway does.
    url = start_simulator()
    sources = []
    for name in ("chat_bodies.jsonl", "batch_api.jsonl"):  # every line has a cap
        sources.append(tmp_path / name)
        sources[-1].write_bytes((ROOT / "samples" / name).read_bytes())
    pricing = ROOT / "samples" / "pricing.toml"

    _, predicted, _ = estimate(tmp_path, *sources, "--pricing", pricing)
    run = run_batchib(*sources, "-o", "out.jsonl", "--base-url", url, "--pricing", pricing)

    assert run.status == 0, run.stderr
    summary = run.summary()
    assert predicted["total"]["prompt_tokens"] == summary["usage"]["total"]["prompt_tokens"]
    cost = predicted["total"]["cost_usd"]
    assert cost["min"] <= summary["cost"]["usd"] <= cost["max"]


def test_calibrated_estimate_predicts_the_next_run_within_five_percent(
    tmp_path: Path,
    start_simulator: Any,
    run_batchib: Any,
) -> None:
    url = start_simulator()
    pricing = ROOT / "samples" / "pricing.toml"

    def job(name: str, topic: str) -> Path:
        return write_lines(
            tmp_path / name,
            *(
                {"id": f"{topic}-{i}", "prompt": f"Tell me about {topic} number {i}."}
                for i in range(400)
            ),
        )

    common = ("--model", "gpt-5.4-mini", "--base-url", url)
    first = run_batchib(job("first.jsonl", "rivers"), "-o", "first-out.jsonl", *common)
    assert first.status == 0, first.stderr
    # The next job: the same kind of requests about something else.
    second_input = job("second.jsonl", "mountains")

    _, predicted, _ = estimate(
        tmp_path, second_input, "--model", "gpt-5.4-mini", "--pricing", pricing,
        "--calibrate-from", "first-out.jsonl",
    )  # fmt: skip
    second = run_batchib(second_input, "-o", "second-out.jsonl", *common, "--pricing", pricing)

    assert second.status == 0, second.stderr
    expected = predicted["total"]["cost_usd"]["expected"]
    actual = second.summary()["cost"]["usd"]
    assert abs(actual - expected) <= 0.05 * actual, (expected, actual)
    assert predicted["assumptions"]["calibrated_models"] == ["gpt-5.4-mini"]
    ratios = predicted["assumptions"]["calibration"]["completion_tokens_per_prompt_token"]
    assert ratios["gpt-5.4-mini"] > 0
    # And the prompt side is exact: the simulator counts with the same tokenizer.
    assert (
        predicted["total"]["prompt_tokens"] == second.summary()["usage"]["total"]["prompt_tokens"]
    )


def test_wall_time_at_a_token_rate_counts_a_capped_line_at_its_cap(tmp_path: Path) -> None:
    # The run reserves, and the gateway charges, prompt + max_tokens against --tpm,
    # however short the reply is expected to be.
    line = {"prompt": "x" * 36, "model": "m", "max_tokens": 4000}
    source = write_lines(tmp_path / "in.jsonl", *[line] * 11)

    _, result, _ = estimate(
        tmp_path,
        source,
        "--tpm",
        "60000",
        "--latency",
        "0.1",
        "--expected-completion-tokens",
        "200",
    )

    prompt = result["total"]["prompt_tokens"] / 11
    assert result["total"]["wall_time_s"] == round(10 * (prompt + 4000) / 1000 + 0.1, 1)
