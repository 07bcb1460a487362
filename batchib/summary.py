"""The run summary: the JSON file beside the results, the ledger line, the stderr table."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from batchib.errors import OutputError
from batchib.resultsfile import private_mode


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Replace `path` atomically: a reader sees the old summary or the new, never half."""
    data = orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    directory = path.parent
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temp, private_mode(directory) & ~_umask())
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write the summary {path}: {exc.strerror}") from exc


def append_ledger(path: Path, summary: dict[str, Any]) -> None:
    """Append the summary as one JSON line (a history across cron runs)."""
    data = orjson.dumps(summary, option=orjson.OPT_APPEND_NEWLINE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, private_mode(path.parent))
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot append to the usage log {path}: {exc.strerror}") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def format_table(summary: dict[str, Any]) -> str:
    """A short human summary for stderr."""
    counts = summary["counts"]
    usage = summary["usage"]
    latency = summary["latency_ms"]
    lines = [
        f"batchib: {summary['status']} (exit {summary['exit_status']}) "
        f"in {summary['wall_time_s']:.1f} s",
        f"  requests   {counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{counts['invalid_lines']} invalid lines, {counts['skipped_already_done']} already done, "
        f"{counts['not_sent']} not sent"
        + (
            f", {counts['cancelled_in_flight']} cut off in flight (may be billed, no result)"
            if counts.get("cancelled_in_flight")
            else ""
        ),
        f"  attempts   {summary['attempts']} ({summary['retries']} retries, "
        f"{summary['rate_limited_429']} rate-limited)",
        f"  tokens     {usage['total']['prompt_tokens']} prompt + "
        f"{usage['total']['completion_tokens']} completion = {usage['total']['total_tokens']}",
    ]
    for model, figures in usage["by_served_model"].items():
        lines.append(
            f"    {model:<32} {figures['requests']:>8} req {figures['total_tokens']:>12} tokens"
        )
    if latency["p50"] is not None:
        lines.append(
            f"  latency    p50 {latency['p50']} ms, p90 {latency['p90']} ms, "
            f"p99 {latency['p99']} ms, max {latency['max']} ms"
        )
    cost = summary.get("cost")
    if cost is not None:
        unpriced = ", ".join(cost["unpriced_models"])
        lines.append(
            f"  cost       ${cost['usd']:.4f}"
            + (f" + unpriced: {unpriced} (tokens above)" if unpriced else "")
        )
    if summary.get("answers_without_usage"):
        lines.append(
            f"  no usage   {summary['answers_without_usage']} answers (2xx) did not say what "
            "they used: tokens and cost above are short of what was billed"
        )
    throughput = summary["throughput"]
    lines.append(
        f"  throughput {throughput['requests_per_s']} req/s, {throughput['tokens_per_s']} tokens/s"
    )
    if summary["failures_by_code"]:
        failures = ", ".join(f"{k} {v}" for k, v in summary["failures_by_code"].items())
        lines.append(f"  failures   {failures}")
    if summary.get("stop"):
        lines.append(f"  stopped    {summary['stop']['message']}")
    lines.append(f"  results    {summary['output']}")
    lines.append(f"  summary    {summary['summary']}")
    return "\n".join(lines)
