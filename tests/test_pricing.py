"""Price tables, the cost of a response, and cost in a run's summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from batchib.errors import ConfigError
from batchib.pricing import Price, PriceTable, Spend
from tests.conftest import CliRun, RecordingGateway

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 1_000_000, "completion_tokens": 0}, 2.0),
        ({"prompt_tokens": 0, "completion_tokens": 1_000_000}, 8.0),
        (
            {
                "prompt_tokens": 1_000_000,
                "completion_tokens": 0,
                "prompt_tokens_details": {"cached_tokens": 400_000},
            },
            0.6 * 2.0 + 0.4 * 0.5,
        ),
        # Reasoning tokens are part of completion_tokens: billed once, as output.
        (
            {
                "prompt_tokens": 0,
                "completion_tokens": 500_000,
                "completion_tokens_details": {"reasoning_tokens": 300_000},
            },
            4.0,
        ),
        ({"prompt_tokens": 10, "completion_tokens": True}, 10 * 2.0 / 1e6),  # bool is no count
        ({}, 0.0),
    ],
)
def test_cost_of_a_response(usage: dict[str, object], expected: float) -> None:
    price = Price(input=2.0, output=8.0, cached_input=0.5)
    assert price.cost_usd(usage) == pytest.approx(expected)


def test_per_request_fee_is_added_to_each_response() -> None:
    price = Price(input=0.0, output=0.0, cached_input=0.0, per_request=0.01)
    assert price.cost_usd({"prompt_tokens": 5}) == pytest.approx(0.01)


def table(tmp_path: Path, text: str) -> PriceTable:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    return PriceTable.load(path)


def test_exact_name_beats_glob_and_longer_glob_beats_shorter(tmp_path: Path) -> None:
    prices = table(
        tmp_path,
        """
        [models."gpt-5.4*"]
        input = 1
        output = 1
        [models."gpt-5.4-mini*"]
        input = 2
        output = 2
        [models."gpt-5.4-mini-2026-03-01"]
        input = 3
        output = 3
        """,
    )

    assert prices.price_for("gpt-5.4-2026-03-01") == Price(1, 1, 1)
    assert prices.price_for("gpt-5.4-mini-2026-09-09") == Price(2, 2, 2)
    assert prices.price_for("gpt-5.4-mini-2026-03-01") == Price(3, 3, 3)
    assert prices.price_for("claude-9") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no \\[models"),
        ('[models."m"]\ninput = 1\n', "needs `output`"),
        ('[models."m"]\ninput = -1\noutput = 1\n', "must be a number >= 0"),
        ('[models."m"]\ninput = 1\noutput = 1\ncahced_input = 1\n', "unknown keys cahced_input"),
        ("not toml [", "cannot read"),
    ],
)
def test_bad_price_tables_are_refused_with_the_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        table(tmp_path, text)


def test_unpriced_models_are_listed_never_counted_as_free(tmp_path: Path) -> None:
    spend = Spend(table(tmp_path, '[models."a*"]\ninput = 1\noutput = 1\n'))
    spend.add("alias", "a-1", {"prompt_tokens": 1_000_000, "completion_tokens": 0})
    spend.add("other", "b-1", {"prompt_tokens": 1_000_000, "completion_tokens": 0})

    summary = spend.as_dict()

    assert summary["usd"] == pytest.approx(1.0)
    assert summary["complete"] is False
    assert summary["unpriced_models"] == {"b-1": 1}
    assert summary["by_served_model"] == {"a-1": 1.0}
    assert summary["by_requested_model"] == {"alias": 1.0}


def test_run_summary_shows_cost_by_served_and_requested_model(
    sample: Callable[[str], Path],
    run_batchib: Callable[..., CliRun],
    start_recording_simulator: Callable[..., RecordingGateway],
) -> None:
    gateway = start_recording_simulator()
    pricing = ROOT / "samples" / "pricing.toml"

    run = run_batchib(
        sample("chat_bodies.jsonl"), "-o", "out.jsonl", "--base-url", gateway.url,
        "--pricing", pricing,
    )  # fmt: skip

    assert run.status == 0, run.stderr
    cost = run.summary()["cost"]
    prices = PriceTable.load(pricing)
    expected: dict[str, float] = {}
    for record in run.records():
        body = record["response"]["body"]
        price = prices.price_for(body["model"])
        assert price is not None
        expected[body["model"]] = expected.get(body["model"], 0.0) + price.cost_usd(body["usage"])
    assert cost["by_served_model"] == pytest.approx(expected)
    assert cost["usd"] == pytest.approx(sum(expected.values()))
    assert cost["complete"] is True
    assert "cost       $" in run.stderr
