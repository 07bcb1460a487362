"""The results file: the records written to it, appending them, and reading it back
to learn which requests are already done (resume).

Each line is an OpenAI Batch API output object, so existing tooling reads it; batchib's
own fields live under the single key ``"batchib"``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchib.idstore import IdStore
from batchib.inputs import InvalidLine, Request
from batchib.reply import Reply, Verdict, is_billed

SUCCEEDED = "succeeded"
FAILED = "failed"
INVALID = "invalid"


# Record ids are unique without a system call each: a random prefix per process, then a
# counter (the Batch API's own ids are opaque strings of this shape).
_RECORD_PREFIX = f"batch_req_{os.urandom(8).hex()}"
_record_numbers = itertools.count()


def _record_id() -> str:
    return f"{_RECORD_PREFIX}{next(_record_numbers):08x}"


def request_record(
    request: Request, reply: Reply, attempts: int, elapsed_ms: float
) -> dict[str, Any]:
    """The output line for a request that was sent: its final attempt decides."""
    succeeded = reply.verdict is Verdict.SUCCESS
    status, body = reply.status, reply.body
    two_xx = status is not None and is_billed(status)
    response: dict[str, Any] | None = None
    # An HTTP answer keeps its status and request id (the gateway's handle on it) --
    # except a 2xx with no JSON body, which a reader of status codes would take for a
    # success.
    if status is not None and (body is not None or not two_xx):
        response = {"status_code": status, "request_id": reply.request_id or ""}
        if body is not None:
            response["body"] = body
    error: dict[str, str] | None = None
    # A failure says what went wrong in `error` unless its JSON error body does: no
    # answer (no connection, a timeout), a body that is not JSON (a proxy's HTML page, a
    # body cut off), or a 2xx that is no completion.
    if not succeeded and (body is None or two_xx):
        message = reply.message or ""
        if status is not None:
            known_as = (
                f", request id {reply.request_id}" if reply.request_id and not response else ""
            )
            message = f"HTTP {status}{known_as}: {message}"
        error = {"code": reply.code or "unknown", "message": message}
    served = reply.body.get("model") if succeeded and reply.body else None
    return {
        "id": _record_id(),
        "custom_id": request.custom_id,
        "response": response,
        "error": error,
        "batchib": {
            "status": SUCCEEDED if succeeded else FAILED,
            "error_code": None if succeeded else reply.code,
            "attempts": attempts,
            "latency_ms": round(reply.latency_ms, 3),
            "elapsed_ms": round(elapsed_ms, 3),
            "requested_model": request.model,
            "served_model": served if isinstance(served, str) else None,
            "body_hash": request.body_hash,
            "file": request.file,
            "line": request.line,
            "metadata": request.metadata,
        },
    }


def invalid_record(line: InvalidLine) -> dict[str, Any]:
    """The output line for an input line that could not become a request."""
    return {
        "id": _record_id(),
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": line.code, "message": f"{line.file}:{line.line}: {line.message}"},
        "batchib": {
            "status": INVALID,
            "error_code": line.code,
            "attempts": 0,
            "file": line.file,
            "line": line.line,
        },
    }


@dataclass(frozen=True)
class ResumeState:
    done: int  # distinct (custom_id, body hash) pairs with a successful result
    unreadable_lines: int  # lines that are not a result (e.g. torn by a crash)


def read_records(path: Path) -> Iterator[dict[str, Any] | None]:
    """Every line of a results file, parsed; None for a line that is not a record."""
    with open(path, "rb") as stream:
        for raw in stream:
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield None
                continue
            yield record if isinstance(record, dict) else None


def load_done(path: Path, ids: IdStore) -> ResumeState:
    """Record in `ids` every request that already has a successful result in `path`."""
    unreadable = 0
    if not path.exists():
        return ResumeState(0, 0)
    for record in read_records(path):
        own = record.get("batchib") if record else None
        if not isinstance(own, dict):
            unreadable += 1
            continue
        if own.get("status") == SUCCEEDED and isinstance(record, dict):
            custom_id, body_hash = record.get("custom_id"), own.get("body_hash")
            if isinstance(custom_id, str) and isinstance(body_hash, str):
                ids.mark_done(custom_id, body_hash)
    return ResumeState(ids.done_count(), unreadable)
