"""`batchib report`: one true summary recomputed from results files — a crashed run's,
or the shards of a job written on several machines.

Outcomes count each custom_id once (its latest success, else its latest failure).
Usage counts every successful line, because every one of them was paid for, including
those a rerun replaced (an edited line answered twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchib.latest import choose_latest, numbered_records, record_status
from batchib.results import FAILED, INVALID, SUCCEEDED
from batchib.usage import RunStats, summarise
from batchib.version import __version__


def report(paths: Sequence[Path]) -> dict[str, Any]:
    files = list(paths)
    latest = choose_latest(files)
    paid = RunStats()  # every success line: what was paid for
    outcomes = {SUCCEEDED: 0, FAILED: 0, INVALID: 0}
    unreadable = lines = sent_lines = attempts = 0
    try:
        for position, record in numbered_records(files):
            lines += 1
            status = record_status(record)
            if status is None or record is None:
                unreadable += 1
                continue
            custom_id, succeeded = status
            own = record.get("batchib")
            own = own if isinstance(own, dict) else {}
            kind = SUCCEEDED if succeeded else str(own.get("status") or FAILED)
            if kind != INVALID:
                sent_lines += 1
                attempts += int(own.get("attempts") or 1)
            response = record.get("response")
            body = response.get("body") if isinstance(response, dict) else None
            if succeeded and isinstance(body, dict):
                paid.add_success(str(own.get("requested_model") or body.get("model")), body)
                latency = own.get("latency_ms")
                if isinstance(latency, int | float):
                    paid.latency.add(float(latency))
            if latest.chosen(position, custom_id):
                outcomes[kind if kind in outcomes else FAILED] += 1
                if not succeeded:
                    code = own.get("error_code") or _error_code(record)
                    paid.failures_by_code[str(code)] += 1
    finally:
        latest.close()
    figures = summarise(paid, 0.0)
    for key in ("throughput", "wall_time_s"):
        figures.pop(key)
    figures["counts"] = {
        "lines": lines,
        "unreadable_lines": unreadable,
        "requests": sum(outcomes.values()),
        "succeeded": outcomes[SUCCEEDED],
        "failed": outcomes[FAILED],
        "invalid_lines": outcomes[INVALID],
        "successful_lines_paid": paid.succeeded,
    }
    figures["attempts"] = attempts
    figures["retries"] = attempts - sent_lines
    figures.pop("rate_limited_429")  # not recorded per line
    return {
        "batchib_version": __version__,
        "report_of": [str(path) for path in files],
        # Every request succeeded, and every line was a record: a line that is not
        # (a torn tail, an input given by mistake) may be a request unaccounted for.
        "status": (
            "complete" if outcomes[FAILED] + outcomes[INVALID] + unreadable == 0 else "has_failures"
        ),
        **figures,
    }


def _error_code(record: dict[str, Any]) -> str:
    error = record.get("error")
    if isinstance(error, dict) and error.get("code"):
        return str(error["code"])
    response = record.get("response")
    if isinstance(response, dict):
        return f"http_{response.get('status_code')}"
    return "unknown"
