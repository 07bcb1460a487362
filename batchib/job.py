"""A whole job, as `batchib run` does it: resume state from the results file, the
inputs read as requests, the pipeline, and the summary written beside the results."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from batchib.budget import Budget
from batchib.compact import compact
from batchib.config import Job, RequestDefaults, RunSettings
from batchib.control import RunControl
from batchib.eventloop import running_loop_name
from batchib.idstore import IdStore
from batchib.inputs import Request
from batchib.manifest import differences, write_manifest
from batchib.parseproc import Parser, ParserUsage
from batchib.results import ResumeState, load_done
from batchib.resultsfile import ResultsFile, set_aside_torn_tail, torn_path
from batchib.runfiles import check_apart
from batchib.runner import RunOutcome, run_batch
from batchib.source import InputFiles, ObjectsInMemory
from batchib.summary import append_ledger, utc_now, write_summary
from batchib.tokens import tokenizer_installed
from batchib.usage import RunStats, summarise
from batchib.version import __version__


def _status(outcome: RunOutcome) -> str:
    if outcome.stop is not None:
        return "interrupted" if outcome.stop.code == "interrupted" else "stopped"
    return "completed" if outcome.exit_status == 0 else "completed_with_failures"


def build_summary(
    job: Job, outcome: RunOutcome, resume: ResumeState, started_at: str
) -> dict[str, Any]:
    stop = outcome.stop
    return {
        "batchib_version": __version__,
        "status": _status(outcome),
        "exit_status": outcome.exit_status,
        "stop": None if stop is None else {"code": stop.code, "message": stop.message},
        "started_at": started_at,
        "finished_at": utc_now(),
        "inputs": list(job.inputs),
        "output": str(job.output),
        "summary": str(job.summary_path),
        "base_url": job.settings.base_url,
        "settings": job.describe(),
        "limits_at_end": outcome.limits,
        "resume": {
            "previously_done": resume.done,
            "unreadable_lines": resume.unreadable_lines,
        },
        **summarise(outcome.stats, outcome.wall_time_s),
    } | {"token_estimator": _estimator_note(), "event_loop": running_loop_name()}


def _estimator_note() -> str:
    if tokenizer_installed():
        return (
            "bpe-openai (o200k_base or cl100k_base by model, with the chat overhead) once "
            "tokens matter: a budget, or a tokens-per-minute limit configured, announced by "
            "the gateway or learnt from a 429; chars/4 before that"
        )
    return (
        "chars/4: the tokenizer extra is not installed (pip install 'batchib[tokenizer]'); "
        "token limits are enforced from a rough estimate, reconciled with reported usage"
    )


async def run_job(
    job: Job,
    *,
    control: RunControl | None = None,
    on_progress: Callable[[RunStats], None] = lambda stats: None,
    parser: Parser | None = None,
) -> dict[str, Any]:
    """Run `job` to the end (or to a stop) and return the summary it wrote. With
    `parser` (a :func:`batchib.parseproc.spawn_parser` process) the input is parsed
    there; otherwise on the event loop. Either way this call stops and reaps it."""
    check_apart(job)  # the CLI checked already; a library caller may not have
    started_at = utc_now()
    if not differences(job):
        # With --allow-mixed the manifest keeps describing the first settings.
        write_manifest(job)
    ids = IdStore()
    parser_usage: ParserUsage | None = None
    try:
        # Reading the previous results happens before any request; it is local I/O.
        torn_bytes = 0 if job.overwrite else set_aside_torn_tail(job.output)
        resume = ResumeState(0, 0) if job.overwrite else load_done(job.output, ids)
        results = ResultsFile(job.output, overwrite=job.overwrite)
        budget = (
            Budget(job.max_cost_usd, job.max_total_tokens, job.prices)
            if job.max_cost_usd is not None or job.max_total_tokens is not None
            else None
        )
        try:
            outcome = await run_batch(
                parser.start(job.inputs, job.defaults, job.shard)
                if parser is not None
                else InputFiles(job.inputs, job.defaults, ids, job.shard),
                job.settings,
                results,
                is_done=lambda request: _is_done(ids, request),
                control=control,
                on_progress=on_progress,
                prices=job.prices,
                budget=budget,
            )
        finally:
            results.close()
    finally:
        try:
            ids.close()
        finally:
            if parser is not None:
                parser_usage = parser.close()
    summary = build_summary(job, outcome, resume, started_at)
    summary["input_parser"] = _parser_note(parser, parser_usage)
    summary["budget"] = None if budget is None else budget.as_dict()
    if torn_bytes:
        summary["resume"]["torn_bytes_set_aside"] = torn_bytes
        summary["resume"]["torn_file"] = str(torn_path(job.output))
    write_summary(job.summary_path, summary)
    if job.usage_log is not None:
        append_ledger(job.usage_log, summary)
    if job.compact:
        # After the summary: a failure here must not cost the run its summary.
        compact(job.output)
    return summary


def _parser_note(parser: Parser | None, usage: ParserUsage | None) -> dict[str, Any]:
    if parser is None:
        return {"where": "event loop"}
    if usage is None:  # see Parser.close
        return {"where": "process", "pid": parser.pid, "not_reaped": True}
    return {
        "where": "process",
        "pid": parser.pid,
        "cpu_s": round(usage.cpu_s, 3),
        "peak_rss_mb": round(usage.peak_rss_mb, 1),
    }


def _is_done(ids: IdStore, request: Request) -> bool:
    return ids.is_done(request.custom_id, request.body_hash)


class _Records:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


async def run_requests(
    lines: Iterable[Any],
    settings: RunSettings,
    defaults: RequestDefaults | None = None,
) -> tuple[list[dict[str, Any]], RunOutcome]:
    """Send a small batch held in memory and return its records and outcome.

    Each item of `lines` is one input line already decoded (a dict in any of the three
    formats). Records come back in completion order; match them on `custom_id`. For
    large batches use :func:`run_job`, which streams to a file and resumes.
    """
    sink = _Records()
    ids = IdStore()
    try:
        outcome = await run_batch(
            ObjectsInMemory(lines, defaults or RequestDefaults(), ids, "<memory>"), settings, sink
        )
    finally:
        ids.close()
    return sink.records, outcome
