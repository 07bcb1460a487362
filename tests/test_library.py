"""batchib used from Python: pass lines and settings, get records and the outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from batchib.config import ApiKey, RequestDefaults, RunSettings
from batchib.job import run_requests


def test_run_requests_returns_a_record_per_line_and_the_totals(
    start_simulator: Callable[..., str],
) -> None:
    url = start_simulator()
    lines = [
        {"id": "a", "prompt": "Say hello."},
        {"custom_id": "b", "messages": [{"role": "user", "content": "Say bye."}]},
        {"id": "a", "prompt": "A duplicate id."},
        {"prompt": ""},
    ]
    settings = RunSettings(api_key=ApiKey("sk-library-test-1234"), base_url=url)

    records, outcome = asyncio.run(
        run_requests(lines, settings, RequestDefaults(model="gpt-5.4-mini"))
    )

    by_status = {r["custom_id"]: r["batchib"]["status"] for r in records}
    assert by_status == {
        "a": "succeeded",
        "b": "succeeded",
        "<memory>:3": "invalid",
        "<memory>:4": "invalid",
    }
    assert outcome.stats.succeeded == 2
    assert outcome.stats.total.total_tokens == sum(
        r["response"]["body"]["usage"]["total_tokens"]
        for r in records
        if r["batchib"]["status"] == "succeeded"
    )
    assert outcome.exit_status == 3
