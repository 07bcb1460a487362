"""The pipeline against a scripted gateway over real HTTP on loopback.

Retry waits go through an injected sleep that records and returns at once, so no test
waits for a backoff or a Retry-After.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_writer import StreamWriter

from batchib import eagerwrite, runner
from batchib.budget import Budget
from batchib.client import GatewayClient
from batchib.config import ApiKey, RequestDefaults, RunSettings
from batchib.control import RunControl
from batchib.eagerwrite import WRITE_BYTES_CODE, SpareTime
from batchib.errors import OutputError
from batchib.inputs import InvalidLine, Request, parse_line
from batchib.reply import Reply
from batchib.runner import RunOutcome, run_batch
from batchib.source import Source
from batchib.usage import RunStats
from tests.scripted import (
    ScriptedGateway,
    close_connection,
    completion,
    error,
    hang,
    reply,
)

KEY = "sk-test-runner-0123456789"


class ListSink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {r["custom_id"]: r for r in self.records}


class RecordingSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def requests(*prompts: str) -> list[Request | InvalidLine]:
    defaults = RequestDefaults(model="m")
    lines = [f'{{"id": "{p}", "prompt": "{p}"}}'.encode() for p in prompts]
    return [parse_line(raw, "in.jsonl", n, defaults) for n, raw in enumerate(lines, 1)]


def run(
    gateway: ScriptedGateway,
    items: Source | list[Request | InvalidLine],
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    control: RunControl | None = None,
    interrupt_after_s: float | None = None,
    sink: ListSink | None = None,
    on_progress: Callable[[RunStats], None] = lambda stats: None,
    budget: Budget | None = None,
    **settings: Any,
) -> tuple[RunOutcome, ListSink]:
    """One run against `gateway`; a run that hangs fails after 60 s instead."""
    records = sink if sink is not None else ListSink()

    async def go() -> RunOutcome:
        async with gateway.serving() as url:
            run_settings = RunSettings(api_key=ApiKey(KEY), base_url=url, **settings)
            ctl = control or RunControl()
            if interrupt_after_s is not None:
                asyncio.get_running_loop().call_later(interrupt_after_s, ctl.interrupt)
            return await run_batch(
                items,
                run_settings,
                records,
                control=ctl,
                on_progress=on_progress,
                sleep=sleep or RecordingSleep(),
                rng=random.Random(1),
                budget=budget,
            )

    return asyncio.run(asyncio.wait_for(go(), timeout=60)), records


def test_500_is_retried_with_backoff_then_succeeds() -> None:
    gateway = ScriptedGateway({"a": [error(500, "server_error")]})
    sleep = RecordingSleep()
    outcome, sink = run(gateway, requests("a"), sleep=sleep)
    record = sink.by_id()["a"]
    assert record["batchib"]["status"] == "succeeded"
    assert record["batchib"]["attempts"] == 2
    assert len(sleep.waits) == 1 and 0.375 <= sleep.waits[0] <= 0.5
    assert outcome.stats.retries == 1
    assert outcome.exit_status == 0


def test_429_waits_for_retry_after_ms_then_succeeds() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "9"}
    gateway = ScriptedGateway({"a": [error(429, "rate_limit_exceeded", headers)]})
    sleep = RecordingSleep()
    outcome, sink = run(gateway, requests("a"), sleep=sleep)
    assert sleep.waits == [1.5]
    assert sink.by_id()["a"]["batchib"]["status"] == "succeeded"
    assert outcome.stats.rate_limited == 1


def test_retry_after_in_seconds_is_honoured() -> None:
    gateway = ScriptedGateway({"a": [error(503, "overloaded", {"retry-after": "7"})]})
    sleep = RecordingSleep()
    run(gateway, requests("a"), sleep=sleep)
    assert sleep.waits == [7.0]


def test_retry_after_over_two_minutes_is_not_waited_for() -> None:
    gateway = ScriptedGateway({"a": [error(429, "rate_limit_exceeded", {"retry-after": "600"})]})
    sleep = RecordingSleep()
    outcome, sink = run(gateway, requests("a"), sleep=sleep)
    assert sleep.waits == []
    assert gateway.sent("a") == 1
    assert sink.by_id()["a"]["response"]["status_code"] == 429
    assert outcome.exit_status == 3


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    gateway = ScriptedGateway({"a": [error(status, "bad")]})
    outcome, sink = run(gateway, requests("a", "b"))
    assert gateway.sent("a") == 1
    assert sink.by_id()["a"]["batchib"]["status"] == "failed"
    assert sink.by_id()["a"]["response"]["status_code"] == status
    assert sink.by_id()["b"]["batchib"]["status"] == "succeeded"
    assert outcome.exit_status == 3


def test_x_should_retry_false_overrides_a_retryable_status() -> None:
    gateway = ScriptedGateway({"a": [error(503, "no", {"x-should-retry": "false"})]})
    run(gateway, requests("a"))
    assert gateway.sent("a") == 1


def test_x_should_retry_true_retries_a_client_error() -> None:
    gateway = ScriptedGateway({"a": [error(400, "flaky", {"x-should-retry": "true"})]})
    _, sink = run(gateway, requests("a"))
    assert gateway.sent("a") == 2
    assert sink.by_id()["a"]["batchib"]["status"] == "succeeded"


def test_closed_connection_is_retried() -> None:
    gateway = ScriptedGateway({"a": [close_connection()]})
    _, sink = run(gateway, requests("a"))
    assert gateway.sent("a") == 2
    assert sink.by_id()["a"]["batchib"]["attempts"] == 2
    assert sink.by_id()["a"]["batchib"]["status"] == "succeeded"


def test_hung_response_times_out_and_is_retried() -> None:
    gateway = ScriptedGateway({"a": [hang(5.0)]})
    _, sink = run(gateway, requests("a"), timeout_s=0.3)
    record = sink.by_id()["a"]
    assert record["batchib"]["status"] == "succeeded"
    assert record["batchib"]["attempts"] == 2


def test_200_with_a_body_that_is_not_json_is_retried() -> None:
    gateway = ScriptedGateway({"a": [reply(200, raw=b'{"id": "chatcmpl-trunc')]})
    _, sink = run(gateway, requests("a"))
    assert gateway.sent("a") == 2
    assert sink.by_id()["a"]["batchib"]["status"] == "succeeded"


def test_attempts_are_capped_and_the_last_failure_is_recorded() -> None:
    gateway = ScriptedGateway(default=error(502, "bad_gateway"))
    sleep = RecordingSleep()
    outcome, sink = run(gateway, requests("a"), sleep=sleep, max_attempts=3)
    record = sink.by_id()["a"]
    assert gateway.sent("a") == 3
    assert record["batchib"] == record["batchib"] | {"status": "failed", "attempts": 3}
    assert record["response"]["status_code"] == 502
    assert record["response"]["body"]["error"]["code"] == "bad_gateway"
    assert len(sleep.waits) == 2
    assert outcome.stats.failures_by_code == {"bad_gateway": 1}


def test_an_answer_that_is_not_json_keeps_its_status_and_request_id(validate: Any) -> None:
    page = reply(502, raw=b"<html>Bad Gateway</html>", headers={"x-request-id": "req_proxy"})
    gateway = ScriptedGateway(default=page)

    _, sink = run(gateway, requests("a"), max_attempts=1)

    record = sink.by_id()["a"]
    validate("BatchRequestOutput", record)
    assert record["response"] == {"status_code": 502, "request_id": "req_proxy"}
    assert record["error"]["message"].startswith("HTTP 502: <html>Bad Gateway")
    assert record["batchib"]["status"] == "failed"


def test_a_connection_failure_after_all_attempts_is_an_error_record() -> None:
    gateway = ScriptedGateway(default=close_connection())
    _, sink = run(gateway, requests("a"), max_attempts=2)
    record = sink.by_id()["a"]
    assert record["response"] is None
    assert record["error"]["code"] == "connection_error"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "invalid_api_key"),
        (402, "payment_required"),
        (403, "forbidden"),
        (429, "insufficient_quota"),
    ],
)
def test_an_answer_that_dooms_every_request_stops_dispatching(status: int, code: str) -> None:
    prompts = [f"p{i}" for i in range(40)]
    gateway = ScriptedGateway(default=error(status, code), latency_s=0.01)
    outcome, sink = run(gateway, requests(*prompts), concurrency=2)
    assert outcome.exit_status == 1
    assert outcome.stop is not None and outcome.stop.code == code
    # Only the requests already in flight when the first answer came are sent.
    assert len(gateway.received) <= 2
    assert all(r.prompt in prompts for r in gateway.received)
    assert outcome.stats.not_sent == outcome.stats.queued - len(sink.records) > 0
    assert not outcome.stats.input_complete
    assert outcome.stats.retries == 0


def test_peak_in_flight_never_exceeds_concurrency() -> None:
    gateway = ScriptedGateway(latency_s=0.02)
    outcome, sink = run(gateway, requests(*[f"p{i}" for i in range(60)]), concurrency=5)
    assert gateway.peak_in_flight == 5
    assert len(sink.records) == 60
    assert outcome.stats.input_complete
    assert outcome.exit_status == 0


def test_600_rpm_never_sends_more_than_10_in_any_second_at_start() -> None:
    gateway = ScriptedGateway()
    outcome, _ = run(gateway, requests(*[f"p{i}" for i in range(25)]), requests_per_minute=600)
    times = sorted(r.at for r in gateway.received)
    assert len(times) == 25
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 1.0)
        assert in_window <= 10, (i, in_window)
    # The long-run rate is the limit, not far below it: 25 requests span ~2.4 s.
    assert times[-1] - times[0] >= 2.3
    assert outcome.exit_status == 0


def test_interrupt_cancels_hung_requests_after_the_grace_period() -> None:
    gateway = ScriptedGateway(default=hang(30.0))
    outcome, sink = run(
        gateway,
        requests(*[f"p{i}" for i in range(10)]),
        concurrency=3,
        grace_s=0.1,
        interrupt_after_s=0.2,
        # Known limits: no probe request alone first, all three go at once.
        requests_per_minute=60_000,
        tokens_per_minute=10**9,
    )
    assert outcome.exit_status == 130
    assert sink.records == []
    assert len(gateway.received) == 3
    assert outcome.stats.cancelled_in_flight == outcome.stats.attempts == 3
    assert outcome.stats.not_sent == outcome.stats.queued - 3
    assert not outcome.stats.input_complete


def test_interrupt_lets_requests_in_flight_finish_within_grace() -> None:
    gateway = ScriptedGateway(latency_s=0.3)
    outcome, sink = run(
        gateway,
        requests(*[f"p{i}" for i in range(10)]),
        concurrency=3,
        grace_s=5.0,
        interrupt_after_s=0.1,
        requests_per_minute=60_000,
        tokens_per_minute=10**9,
    )
    assert outcome.exit_status == 130
    assert len(sink.records) == 3
    assert all(r["batchib"]["status"] == "succeeded" for r in sink.records)
    assert len(gateway.received) == 3


def test_invalid_lines_become_records_and_the_rest_is_sent() -> None:
    items = [*requests("a"), parse_line(b"{oops", "in.jsonl", 2, RequestDefaults(model="m"))]
    outcome, sink = run(ScriptedGateway(), items)
    assert [r["batchib"]["status"] for r in sink.records].count("invalid") == 1
    assert sink.by_id()["a"]["batchib"]["status"] == "succeeded"
    assert outcome.exit_status == 3


def test_requests_already_done_are_skipped() -> None:
    gateway = ScriptedGateway()
    items = requests("a", "b", "c")
    sink = ListSink()

    async def go() -> RunOutcome:
        async with gateway.serving() as url:
            return await run_batch(
                items,
                RunSettings(api_key=ApiKey(KEY), base_url=url),
                sink,
                is_done=lambda request: request.custom_id == "b",
            )

    outcome = asyncio.run(go())
    assert sorted(r.prompt for r in gateway.received) == ["a", "c"]
    assert outcome.stats.skipped == 1
    assert outcome.exit_status == 0


def test_the_request_sent_is_the_canonical_body_with_auth_and_user_agent() -> None:
    gateway = ScriptedGateway()
    items = requests("a")
    run(gateway, items)
    (received,) = gateway.received
    assert received.headers["Authorization"] == f"Bearer {KEY}"
    assert received.headers["User-Agent"].startswith("batchib/")
    assert received.body == {"model": "m", "messages": [{"role": "user", "content": "a"}]}


def test_order_input_writes_records_in_input_order_despite_a_slow_first_request() -> None:
    gateway = ScriptedGateway({"p0": [hang(0.3)]}, latency_s=0.01)
    prompts = [f"p{i}" for i in range(20)]
    items = [*requests(*prompts[:5]), parse_line(b"{bad", "in.jsonl", 6, RequestDefaults())]
    items += requests(*prompts[5:])

    outcome, sink = run(gateway, items, concurrency=4, order_input=True, reorder_window=50)

    assert [r["custom_id"] for r in sink.records] == [*prompts[:5], "in.jsonl:6", *prompts[5:]]
    assert outcome.stats.reorder_window_full == 0


def test_a_full_reorder_window_holds_reading_back_and_is_reported() -> None:
    gateway = ScriptedGateway({"p0": [hang(0.3)]})
    prompts = [f"p{i}" for i in range(30)]

    outcome, sink = run(
        gateway,
        requests(*prompts),
        concurrency=4,
        order_input=True,
        reorder_window=5,
        # Known limits: no probe, so p1..p4 go while p0 hangs.
        requests_per_minute=60_000,
        tokens_per_minute=10**9,
    )

    assert [r["custom_id"] for r in sink.records] == prompts
    assert outcome.stats.reorder_window_full >= 1
    # While p0 hung, only the window's lines (p0..p4) were admitted: p5 waited for p0.
    arrival = {r.prompt: r.at for r in gateway.received}
    assert arrival["p5"] - arrival["p0"] >= 0.25
    assert max(arrival[f"p{i}"] for i in range(1, 5)) - arrival["p0"] < 0.25


def test_nothing_waiting_for_admission_leaves_after_a_stop() -> None:
    # Limits unknown: p0 goes alone (the probe), p1 and p2 wait for its answer. An
    # interrupt meanwhile must keep them from being sent when the answer comes.
    gateway = ScriptedGateway(latency_s=0.3)
    outcome, sink = run(
        gateway,
        requests(*[f"p{i}" for i in range(10)]),
        concurrency=3,
        grace_s=5.0,
        interrupt_after_s=0.1,
    )
    assert outcome.exit_status == 130
    assert [r.prompt for r in gateway.received] == ["p0"]
    assert [r["custom_id"] for r in sink.records] == ["p0"]
    assert outcome.stats.not_sent == outcome.stats.queued - 1


def test_an_interrupt_after_a_fatal_stop_cancels_what_is_in_flight() -> None:
    gateway = ScriptedGateway({"p0": [error(401, "invalid_api_key")]}, default=hang(30.0))
    control = RunControl()

    async def interrupt_later() -> None:
        await control.wait_stopped()
        await asyncio.sleep(0.1)
        control.interrupt()

    async def go() -> RunOutcome:
        async with gateway.serving() as url:
            settings = RunSettings(
                api_key=ApiKey(KEY),
                base_url=url,
                concurrency=3,
                requests_per_minute=60_000,
                tokens_per_minute=10**9,
            )
            waiter = asyncio.create_task(interrupt_later())
            outcome = await run_batch(
                requests("p0", "p1", "p2"), settings, ListSink(), control=control
            )
            await waiter
            return outcome

    outcome = asyncio.run(asyncio.wait_for(go(), timeout=10))
    assert outcome.exit_status == 130


def test_tokens_are_counted_exactly_only_once_a_token_limit_applies() -> None:
    # The tokenizer (~65 MB) is loaded only when a count decides something: with no
    # token limit the free chars/4 estimate feeds the meters; with one, every attempt is
    # counted with the model's encoding ("m" is an alias: o200k_base).
    defaults = RequestDefaults(model="m")
    lines = [f'{{"id": "r{n}", "prompt": "tiktoken is great!"}}'.encode() for n in range(5)]
    items: list[Request | InvalidLine] = [
        parse_line(raw, "in.jsonl", n, defaults) for n, raw in enumerate(lines, 1)
    ]
    unlimited, _ = run(ScriptedGateway(), items)
    limited, _ = run(ScriptedGateway(), items, requests_per_minute=60_000, tokens_per_minute=10**9)
    assert dict(unlimited.stats.estimated_with) == {"chars/4": 5}
    assert dict(limited.stats.estimated_with) == {"o200k_base": 5}
    # The cookbook's "tiktoken is great!" is 6 tokens in o200k_base, 18 characters (5 by
    # chars/4); "user" 1 either way; 3 per message and 3 for the reply primer.
    assert limited.stats.estimated_prompt_tokens == 5 * (6 + 1 + 3 + 3)
    assert unlimited.stats.estimated_prompt_tokens == 5 * (5 + 1 + 3 + 3)


class RecordingSource:
    """A blocking Source that notes which thread reads and which parses."""

    blocking = True

    def __init__(self, items: list[Request | InvalidLine], block: int) -> None:
        self.items = items
        self.block = block
        self.readers: set[str] = set()
        self.parsers: set[str] = set()

    def read_block(self) -> list[Request | InvalidLine]:
        self.readers.add(threading.current_thread().name)
        block, self.items = self.items[: self.block], self.items[self.block :]
        return block

    def parse(self, block: Sequence[Any]) -> list[Request | InvalidLine]:
        self.parsers.add(threading.current_thread().name)
        return list(block)


def test_blocking_reads_happen_on_one_thread_of_their_own_and_parsing_on_the_loop() -> None:
    # asyncio's default pool may start a new thread per read (each with its own malloc
    # arena, so memory creeps up with the input); the reader is one dedicated thread.
    # Parsing stays on the loop: in the reader it fought the loop for the GIL.
    source = RecordingSource(list(requests(*[f"p{i}" for i in range(1000)])), 300)

    outcome, _ = run(ScriptedGateway(), source, concurrency=8)
    assert outcome.stats.succeeded == 1000
    assert len(source.readers) == 1
    assert source.readers.pop().startswith("batchib-reader")
    assert source.parsers == {threading.main_thread().name}


class FailingSink(ListSink):
    """Takes `room` records, then fails like a full disk."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, record: dict[str, Any]) -> None:
        if len(self.records) >= self.room:
            raise OutputError("cannot write out.jsonl: No space left on device")
        super().write(record)


def test_an_output_that_fails_mid_run_ends_the_run_with_its_error() -> None:
    # Records are written at the end of each loop iteration, from a callback: its error
    # must still reach the caller, not the loop's exception handler.
    sink = FailingSink(room=5)

    with pytest.raises(OutputError, match="No space left"):
        run(ScriptedGateway(), requests(*[f"p{i}" for i in range(50)]), sink=sink, concurrency=4)
    assert len(sink.records) == 5


def test_a_bug_while_recording_a_batch_ends_the_run_with_its_error() -> None:
    calls = 0

    def progress(stats: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("progress broke")

    caught: list[BaseException] = []
    try:
        run(
            ScriptedGateway(),
            requests(*[f"p{i}" for i in range(200)]),
            on_progress=progress,
            concurrency=4,
        )
    except* RuntimeError as group:
        caught.extend(group.exceptions)
    assert [str(error) for error in caught] == ["progress broke"]


def test_an_output_failing_with_the_reorder_window_full_ends_the_run() -> None:
    # In input order a failed write leaves the window stuck; the run must end with the
    # error, not wait for a window that can no longer move.
    sink = FailingSink(room=3)

    with pytest.raises(OutputError, match="No space left"):
        run(
            ScriptedGateway(),
            requests(*[f"p{i}" for i in range(50)]),
            sink=sink,
            concurrency=2,
            order_input=True,
            reorder_window=4,
        )
    assert [r["custom_id"] for r in sink.records] == ["p0", "p1", "p2"]


class FlushCountingSink(ListSink):
    def __init__(self) -> None:
        super().__init__()
        self.flushed = 0

    def flush(self) -> None:
        self.flushed = len(self.records)


@pytest.mark.parametrize("body_written_at_once", [False, True])
def test_where_a_body_leaves_inside_send_the_answers_before_it_are_recorded_first(
    monkeypatch: pytest.MonkeyPatch, body_written_at_once: bool
) -> None:
    # On Python >= 3.12 aiohttp writes a body inside session.post(): every answer
    # settled so far must be flushed before that, or a kill -9 re-sends it.
    monkeypatch.setattr(runner, "BODY_WRITTEN_AT_ONCE", body_written_at_once)
    sink = FlushCountingSink()
    flushed_at_send: list[int] = []
    real_send = GatewayClient.send

    async def observed_send(self: GatewayClient, body_bytes: bytes) -> Reply:
        flushed_at_send.append(sink.flushed)
        return await real_send(self, body_bytes)

    monkeypatch.setattr(GatewayClient, "send", observed_send)

    run(ScriptedGateway(), requests(*[f"p{i}" for i in range(5)]), sink=sink, concurrency=1)
    if body_written_at_once:
        assert flushed_at_send == [0, 1, 2, 3, 4]
    else:  # 3.11: flushed by the end of the iteration, before the body's own task runs,
        # so at most the answer just before a send may not be flushed when it starts
        assert all(flushed >= i - 1 for i, flushed in enumerate(flushed_at_send))
        assert len(flushed_at_send) == 5
    assert sink.flushed == 5


def test_the_requests_read_ahead_of_the_workers_stay_within_the_queue_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Memory follows the concurrency: the producer adds a slice at a time and then waits,
    # so at most twice the concurrency plus one slice are ever queued.
    peak = 0

    class MeasuredQueue(runner.WorkQueue[Any]):
        def put(self, entry: Any) -> None:
            nonlocal peak
            super().put(entry)
            peak = max(peak, self.qsize())

    monkeypatch.setattr(runner, "WorkQueue", MeasuredQueue)
    count = 3 * runner.PARSE_BATCH
    source = RecordingSource(list(requests(*[f"p{i}" for i in range(count)])), count)
    outcome, sink = run(ScriptedGateway(latency_s=0.001), source, concurrency=4)

    assert outcome.stats.succeeded == count
    assert len(sink.records) == count
    assert peak <= 2 * 4 + runner.PARSE_BATCH + 4  # + the end markers


class EagerWrites(SpareTime):
    """Eager body writes from the start, whatever the loop's load."""

    def __init__(self) -> None:
        super().__init__()
        self.eager = True

    def update(self) -> None:
        pass


class DeferredWrites(SpareTime):
    def update(self) -> None:
        pass


def observe_client_body_writes(
    monkeypatch: pytest.MonkeyPatch, observe: Callable[[], None]
) -> None:
    """Call `observe` as each request body (not a server's answer) is written."""
    real_write = StreamWriter.write

    async def observed_write(self: StreamWriter, chunk: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(self.protocol, ResponseHandler):
            observe()
        await real_write(self, chunk, *args, **kwargs)

    monkeypatch.setattr(StreamWriter, "write", observed_write)


@pytest.mark.skipif(not eagerwrite.NEEDED, reason="aiohttp writes bodies eagerly itself")
@pytest.mark.parametrize("writes", [DeferredWrites, EagerWrites])
def test_a_body_leaves_only_once_the_answers_before_it_are_recorded(
    monkeypatch: pytest.MonkeyPatch, writes: type[SpareTime]
) -> None:
    # Deferred (aiohttp's default on 3.11) the body leaves from its own task in the next
    # loop iteration; eager, from the worker's task inside session.post(). Either way
    # the answers settled before it are flushed first, or a kill -9 re-sends them.
    monkeypatch.setattr(runner, "SpareTime", writes)
    sink = FlushCountingSink()
    at_write: list[tuple[int, bool]] = []

    def observe() -> None:
        task = asyncio.current_task()
        from_writer_task = task is not None and task.get_coro().cr_code is WRITE_BYTES_CODE
        at_write.append((sink.flushed, from_writer_task))

    observe_client_body_writes(monkeypatch, observe)
    run(ScriptedGateway(), requests(*[f"p{i}" for i in range(5)]), sink=sink, concurrency=1)

    eager = writes is EagerWrites
    assert at_write == [(n, not eager) for n in range(5)]
    assert sink.flushed == 5


@pytest.mark.skipif(not eagerwrite.NEEDED, reason="aiohttp writes bodies eagerly itself")
def test_an_eager_write_that_meets_back_pressure_goes_on_as_a_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "SpareTime", EagerWrites)
    resumed: list[bool] = []
    real_resume = eagerwrite._resume

    def spy(coro: Any, waiting_on: Any) -> Any:
        resumed.append(True)
        return real_resume(coro, waiting_on)

    monkeypatch.setattr(eagerwrite, "_resume", spy)
    big = "x" * (8 * 1024**2)  # far more than a socket takes at once
    gateway = ScriptedGateway(max_body_bytes=16 * 1024**2)
    outcome, _ = run(gateway, requests(big, "small"), concurrency=1)

    assert outcome.stats.succeeded == 2
    assert [r.prompt for r in gateway.received] == [big, "small"]
    assert resumed == [True]  # the big body waited for the socket; the small one did not


@pytest.mark.skipif(not eagerwrite.NEEDED, reason="aiohttp writes bodies eagerly itself")
def test_two_runs_on_one_loop_each_record_their_answers_before_a_body_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One task factory serves both runs: a body of either leaves eagerly only once both
    # have recorded the answers they hold.
    monkeypatch.setattr(runner, "SpareTime", EagerWrites)
    pipelines: list[Any] = []
    real_init = runner._Pipeline.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        pipelines.append(self)

    monkeypatch.setattr(runner._Pipeline, "__init__", init)
    unrecorded_at_write: list[int] = []
    observe_client_body_writes(
        monkeypatch, lambda: unrecorded_at_write.append(sum(len(p.unsettled) for p in pipelines))
    )
    gateway = ScriptedGateway()

    async def go() -> list[RunOutcome]:
        async with gateway.serving() as url:
            settings = RunSettings(api_key=ApiKey(KEY), base_url=url, concurrency=2)
            return await asyncio.gather(
                *(
                    run_batch(
                        requests(*[f"run{run}-p{n}" for n in range(40)]),
                        settings,
                        ListSink(),
                        sleep=RecordingSleep(),
                        rng=random.Random(run),
                    )
                    for run in (0, 1)
                )
            )

    outcomes = asyncio.run(asyncio.wait_for(go(), timeout=60))
    assert [outcome.stats.succeeded for outcome in outcomes] == [40, 40]
    assert len(unrecorded_at_write) == 80
    assert not any(unrecorded_at_write)
    assert not eagerwrite._LOOPS  # the loop's entry goes with its last run


@pytest.mark.parametrize(
    "answer",
    [
        reply(200, {k: v for k, v in completion().items() if k != "usage"}),
        reply(200, {**completion(), "usage": {"prompt_tokens": 5.0, "completion_tokens": 1}}),
        reply(200, raw=b'{"id": "chatcmpl-test", "choices": [{"index": 0, "mess'),
    ],
    ids=["no-usage", "float-counts", "cut-off"],
)
def test_a_2xx_that_does_not_say_what_it_used_spends_its_worst_case(answer: Any) -> None:
    # Each request reserves its prompt estimate plus its cap of 100: about 105 tokens.
    # Counted at that worst case, three fit in a budget of 330, never a fourth.
    gateway = ScriptedGateway(default=answer)
    items = [
        parse_line(
            f'{{"id": "p{i}", "prompt": "p{i}", "max_tokens": 100}}'.encode(),
            "in.jsonl",
            i,
            RequestDefaults(model="m"),
        )
        for i in range(1, 11)
    ]
    budget = Budget(None, 330, None)

    outcome, _ = run(gateway, items, budget=budget, concurrency=1, max_attempts=1)

    sent = len(gateway.received)
    assert outcome.stop is not None and outcome.stop.code == "budget"
    assert sent == 3
    assert outcome.stats.answers_without_usage == sent
    assert 300 < budget.spent_tokens <= 330


def test_a_429_on_the_first_request_does_not_throttle_the_run() -> None:
    # The probe is refused once (the quota spent for now), then everything succeeds:
    # no rate can be read off one request, so the run goes on unlimited. (It used to
    # settle at 15 requests a minute, and this run would not finish for minutes.)
    gateway = ScriptedGateway(
        {"p0": [error(429, "rate_limit_exceeded", {"retry-after-ms": "100"})]}
    )

    outcome, sink = run(gateway, requests(*[f"p{i}" for i in range(100)]), concurrency=16)

    assert outcome.exit_status == 0
    assert len(sink.records) == 100
    assert outcome.limits["requests_per_minute"] is None
    assert outcome.limits["rate_decreases"] == 0


class EndlessSleep:
    """A retry wait that never ends on its own: only a stop can end it."""

    def __init__(self) -> None:
        self.ended_early = 0

    async def __call__(self, seconds: float) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.ended_early += 1
            raise


def test_a_stop_ends_the_waits_of_requests_between_retries() -> None:
    # p0 is refused with a 503 and waits to retry; p1's 401 stops the run. The run must
    # end then, not after p0's wait (which here never ends by itself).
    gateway = ScriptedGateway(
        {
            "p0": [error(503, "overloaded", {"retry-after": "100"})],
            "p1": [error(401, "invalid_api_key")],
        }
    )
    sleep = EndlessSleep()

    outcome, sink = run(gateway, requests("p0", "p1"), concurrency=2, sleep=sleep)

    assert outcome.stop is not None and outcome.stop.code == "invalid_api_key"
    assert sleep.ended_early == 1
    assert {r["custom_id"]: r["response"]["status_code"] for r in sink.records} == {
        "p0": 503,
        "p1": 401,
    }
    assert gateway.sent("p0") == 1


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_and_stops_the_run(status: int) -> None:
    moved = reply(status, raw=b"", headers={"Location": "https://elsewhere.example/v1"})
    gateway = ScriptedGateway(default=moved)

    outcome, sink = run(gateway, requests("a", "b", "c"), concurrency=1)

    assert outcome.exit_status == 1
    assert outcome.stop is not None and "redirects to https://elsewhere.example/v1" in (
        outcome.stop.message
    )
    assert len(gateway.received) == 1  # not followed, and nothing sent after it
    [record] = sink.records
    assert record["response"]["status_code"] == status


def test_a_200_that_is_no_completion_fails_with_an_error_beside_its_response() -> None:
    gateway = ScriptedGateway(default=reply(200, {"error": {"message": "busy", "code": None}}))

    _, sink = run(gateway, requests("a"), max_attempts=1)

    [record] = sink.records
    assert record["response"]["status_code"] == 200
    assert record["error"]["code"] == "invalid_response"
    assert record["batchib"]["status"] == "failed"


def test_a_stop_ends_the_wait_of_requests_held_by_a_slow_bucket() -> None:
    # One request a minute: p1 and p2 wait their turn in the bucket when p0's 401 stops
    # the run. They must not keep it alive for two minutes.
    gateway = ScriptedGateway({"p0": [error(401, "invalid_api_key")]})

    outcome, sink = run(gateway, requests("p0", "p1", "p2"), concurrency=3, requests_per_minute=1)

    assert outcome.stop is not None and outcome.stop.code == "invalid_api_key"
    assert len(gateway.received) == 1
    assert [r["custom_id"] for r in sink.records] == ["p0"]
    assert outcome.stats.not_sent == 2


def test_a_stop_gives_back_the_budget_reserved_for_requests_that_never_leave() -> None:
    # Room for one request's worst case at a time: p1 and p2 wait for p0 to settle. p0's
    # 401 stops the run; the one that then gets the room must give it back, or the other
    # waits for a settlement that never comes.
    gateway = ScriptedGateway({"p0": [error(401, "invalid_api_key")]}, latency_s=0.05)
    items = [
        parse_line(
            f'{{"id": "p{i}", "prompt": "p{i}", "max_tokens": 100}}'.encode(),
            "in.jsonl",
            i + 1,
            RequestDefaults(model="m"),
        )
        for i in range(3)
    ]
    budget = Budget(None, 150, None)

    outcome, _ = run(
        gateway,
        items,
        budget=budget,
        concurrency=3,
        # Known limits: no probe alone first, so p1 and p2 wait in the budget.
        requests_per_minute=60_000,
        tokens_per_minute=10**9,
    )

    assert outcome.stop is not None and outcome.stop.code == "invalid_api_key"
    assert len(gateway.received) == 1
    assert (budget.spent_tokens, budget.in_flight) == (0, False)


def test_a_2xx_cut_off_is_no_response_but_an_error_naming_its_status_and_id() -> None:
    cut = reply(200, raw=b'{"id": "chatcmpl-test", "choices": [{"index": 0, "mess')
    gateway = ScriptedGateway(default=cut)

    _, sink = run(gateway, requests("a"), max_attempts=1)

    [record] = sink.records
    assert record["response"] is None
    assert record["error"]["message"].startswith("HTTP 200, request id req_200: ")
