"""Budgets that cannot be overshot, at any concurrency."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchib.budget import Budget, Reservation
from batchib.pricing import Price, PriceTable
from batchib.reply import Reply, Verdict
from batchib.simulator import SimulatorSettings
from tests.conftest import CliRun, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
PRICING = ROOT / "samples" / "pricing.toml"


def prompts(path: Path, count: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}"}) + "\n" for i in range(count))
    )
    return path


def test_a_budget_that_runs_out_mid_file_is_never_exceeded_and_a_rerun_finishes(
    tmp_path: Path, start_simulator: Callable[..., str], run_batchib: Callable[..., CliRun]
) -> None:
    url = start_simulator(SimulatorSettings(latency_ms=20))
    source = prompts(tmp_path / "in.jsonl", 300)
    common = (
        source, "-o", "out.jsonl", "--model", "gpt-5.4", "--max-tokens", "60",
        "--base-url", url, "--pricing", PRICING, "-c", "64",
    )  # fmt: skip

    first = run_batchib(*common, "--max-cost", "0.02")

    assert first.status == 4, first.stderr
    assert "budget reached" in first.stderr
    spent_first = first.summary()["cost"]["usd"]
    assert spent_first <= 0.02
    assert first.summary()["budget"]["spent_usd"] == pytest.approx(spent_first)
    assert 0 < first.summary()["counts"]["succeeded"] < 300

    rest = run_batchib(*common, "--max-cost", "10")

    assert rest.status == 0, rest.stderr
    records = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["custom_id"] for r in records) == sorted(f"q{i}" for i in range(300))
    prices = PriceTable.load(PRICING)
    whole = 0.0
    for record in records:
        body = record["response"]["body"]
        price = prices.price_for(body["model"])
        assert price is not None
        whole += price.cost_usd(body["usage"])
    assert spent_first + rest.summary()["cost"]["usd"] == pytest.approx(whole)


def test_a_budget_refuses_requests_without_a_completion_cap(
    tmp_path: Path, start_simulator: Callable[..., str], run_batchib: Callable[..., CliRun]
) -> None:
    url = start_simulator()
    source = prompts(tmp_path / "in.jsonl", 5)

    run = run_batchib(
        source, "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", url,
        "--pricing", PRICING, "--max-cost", "1",
    )  # fmt: skip

    assert run.status == 4
    assert "--max-tokens" in run.stderr
    assert read_jsonl(tmp_path / "out.jsonl") == []


def test_max_cost_without_prices_is_a_usage_error(
    tmp_path: Path, run_batchib: Callable[..., CliRun], closed_port_url: str
) -> None:
    source = prompts(tmp_path / "in.jsonl", 1)
    run = run_batchib(source, "-o", "o.jsonl", "--base-url", closed_port_url, "--max-cost", "1")
    assert run.status == 2
    assert "--pricing" in run.stderr


def test_token_budget_reserves_prompt_plus_cap() -> None:
    budget = Budget(None, 100, None)
    body = {"max_tokens": 40}

    first = budget.reserve("m", body, 10)
    second = budget.reserve("m", body, 10)
    third = budget.reserve("m", body, 10)

    assert first == second == Reservation(usd=0.0, tokens=50)
    assert isinstance(third, str) and "token budget" in third
    assert isinstance(first, Reservation)
    budget.settle(first, "m", {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    assert budget.spent_tokens == 15
    assert isinstance(budget.reserve("m", body, 10), str)  # 15 + 50 in flight + 50 > 100
    budget.settle(second, "m", {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    assert budget.reserve("m", body, 10) == Reservation(usd=0.0, tokens=50)  # 30 + 50


def test_an_attempt_without_an_answer_counts_its_worst_case() -> None:
    prices = PriceTable({"m": Price(input=1.0, output=1.0, cached_input=1.0)})
    budget = Budget(1.0, None, prices)
    reservation = budget.reserve("m", {"max_tokens": 1000}, 1000)
    assert not isinstance(reservation, str)

    budget.settle(reservation, None, None, unknown=True)

    assert budget.spent_usd == pytest.approx(2000 / 1e6)


def answer(status: int | None, body: dict[str, Any] | None) -> Reply:
    return Reply(Verdict.RETRY, status, body, None, None, None, None, 1.0)


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 99}


@pytest.mark.parametrize(
    ("reply", "spent"),
    [
        pytest.param(answer(None, None), 2000, id="no-answer"),
        pytest.param(answer(200, {"id": "x"}), 2000, id="200-no-usage"),
        pytest.param(answer(200, None), 2000, id="200-cut-off"),
        pytest.param(answer(200, {"error": {"message": "busy"}}), 0, id="200-error-object"),
        pytest.param(answer(400, {"error": {}}), 0, id="400"),
        pytest.param(answer(200, {"choices": [], "usage": USAGE}), 10, id="usage-from-its-parts"),
    ],
)
def test_what_an_attempt_spends_of_a_token_budget(reply: Reply, spent: int) -> None:
    budget = Budget(None, 10_000, None)
    reservation = budget.reserve("m", {"max_tokens": 1000}, 1000)
    assert not isinstance(reservation, str)
    usage = reply.billed_usage()

    budget.settle(reservation, None, usage, unknown=usage is None and reply.charge_unknown())

    assert budget.spent_tokens == spent


def test_a_released_reservation_spends_nothing_and_frees_its_room() -> None:
    budget = Budget(None, 2000, None)
    reservation = budget.reserve("m", {"max_tokens": 1000}, 1000)
    assert not isinstance(reservation, str)
    assert isinstance(budget.reserve("m", {"max_tokens": 1000}, 1000), str)

    budget.release(reservation)

    assert (budget.spent_tokens, budget.in_flight) == (0, False)
    assert isinstance(budget.reserve("m", {"max_tokens": 1000}, 1000), Reservation)
