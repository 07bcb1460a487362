"""The pipeline: reader → bounded queue → N workers → results file.

Memory follows the concurrency, never the input: a thread reads a block of raw lines at
a time (see :mod:`batchib.source`; or a parsed slice from the parser process, see
:mod:`batchib.parseproc`), the producer parses it on the loop a slice at a time (or
rebuilds the slice's requests) and waits for room in the bounded queue
(:mod:`batchib.workqueue`) between slices; each worker holds one request; results are
written at the end of the loop iteration in which they are known (or before a body
leaves at once, see :mod:`batchib.eagerwrite`). The policy that admits a request (rate
limits) and the one that judges an answer (the client's verdict) live elsewhere.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from batchib.breaker import CircuitBreaker, Trip
from batchib.budget import Budget
from batchib.client import GatewayClient, open_client
from batchib.config import RunSettings
from batchib.control import (
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_OK,
    EXIT_SOME_FAILED,
    RunControl,
    Stop,
)
from batchib.eagerwrite import NEEDED as EAGER_WRITES_NEEDED
from batchib.eagerwrite import SpareTime, eager_writes
from batchib.errors import BatchibError
from batchib.inputs import InvalidLine, Request
from batchib.limits import Limits, Ticket
from batchib.ordering import CompletionOrder, InputOrder, RecordSink
from batchib.pricing import PriceTable, Spend
from batchib.reply import Reply, Verdict
from batchib.results import invalid_record, request_record
from batchib.retry import backoff_s
from batchib.source import PARSE_BATCH, ItemsInMemory, Source
from batchib.tokens import (
    ROUGH_COUNTER,
    TokenCounter,
    counter_for_model,
    estimate_prompt_tokens,
)
from batchib.usage import RunStats
from batchib.workqueue import WorkQueue

# From Python 3.12 aiohttp starts the task that writes a request's body eagerly, so the
# body leaves inside session.post(); on 3.11 it leaves in the next loop iteration unless
# batchib.eagerwrite takes it at once.
BODY_WRITTEN_AT_ONCE = not EAGER_WRITES_NEEDED

Item = Request | InvalidLine
Queue = WorkQueue[tuple[int, Request] | None]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RunOutcome:
    stats: RunStats
    stop: Stop | None
    wall_time_s: float
    # The rates in force at the end (configured, discovered or learnt from 429s).
    limits: dict[str, float | None] = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        if self.stop is not None:
            return self.stop.exit_status
        if self.stats.failed or self.stats.invalid:
            return EXIT_SOME_FAILED
        return EXIT_OK


@dataclass(slots=True)
class _Sent:
    """A request whose attempts are over: what its record and the stats are made of."""

    request: Request
    reply: Reply  # the last attempt's
    attempts: int
    elapsed_ms: float
    prompt_tokens: int  # the estimate the last attempt was admitted with
    counter_name: str


def _fatal_stop(reply: Reply) -> Stop:
    status = reply.status or 0
    reason = {
        401: "the gateway rejected the API key",
        402: "the gateway asks for payment",
        403: "the API key is not allowed to do this",
    }.get(
        status, "the gateway redirects" if 300 <= status < 400 else "the account is out of credit"
    )
    return Stop(
        code=reply.code or f"http_{reply.status}",
        message=(
            f"{reason} (HTTP {reply.status} {reply.code}): {reply.message}; "
            "stopped sending, the rest is left for a rerun"
        ),
        exit_status=EXIT_ABORTED,
        cancels_in_flight=False,
    )


def _breaker_stop(trip: Trip) -> Stop:
    return Stop(
        code="circuit_breaker",
        message=trip.message,
        exit_status=EXIT_ABORTED,
        cancels_in_flight=False,
    )


def _input_stop(exc: OSError) -> Stop:
    return Stop(
        code="input_error",
        message=f"cannot read the input: {exc}; stopped sending, the rest is left for a rerun",
        exit_status=EXIT_ABORTED,
        cancels_in_flight=False,
    )


def _budget_stop(reason: str) -> Stop:
    return Stop(
        code="budget",
        message=f"budget reached: {reason}; stopped sending, a rerun with a larger budget "
        "continues",
        exit_status=EXIT_BUDGET,
        cancels_in_flight=False,
    )


class _Pipeline:
    def __init__(
        self,
        settings: RunSettings,
        client: GatewayClient,
        sink: RecordSink,
        control: RunControl,
        is_done: Callable[[Request], bool],
        on_progress: Callable[[RunStats], None],
        sleep: Sleep,
        rng: random.Random,
        prices: PriceTable | None,
        budget: Budget | None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.control = control
        self.is_done = is_done
        self.on_progress = on_progress
        self.sleep = sleep
        self.rng = rng
        self.limits = Limits(settings.requests_per_minute, settings.tokens_per_minute)
        self.breaker = (
            CircuitBreaker(settings.breaker_window, settings.breaker_min_duration_s)
            if settings.breaker_window
            else None
        )
        self.stats = RunStats(spend=Spend(prices) if prices is not None else None)
        self.budget = budget
        self.order: CompletionOrder | InputOrder = (
            InputOrder(sink, settings.reorder_window)
            if settings.order_input
            else CompletionOrder(sink)
        )
        # Whether the loop has time to spare, for eager body writes (batchib.eagerwrite).
        self.spare = SpareTime()
        # Requests settled in this loop iteration, recorded together at its end.
        self.unsettled: list[tuple[int, _Sent]] = []
        # Set with the error when recording a batch fails (from a loop callback, which
        # cannot raise to anyone): a task of the run awaits it and ends the run.
        self.settle_failed: asyncio.Future[None] | None = None
        # Set when an input cannot be read: the stop, made once the rest is done.
        self.input_failure: Stop | None = None

    async def run(self, source: Source) -> None:
        queue: Queue = WorkQueue(self.settings.concurrency * 2)
        # One reader thread of our own, not asyncio's default pool: that pool may start a
        # new thread for a block asked for while the last thread is still marking itself
        # idle, and each thread brings its own malloc arena (memory that grows with the
        # run instead of staying flat).
        reader = ThreadPoolExecutor(1, thread_name_prefix="batchib-reader")
        settle_failed = self.settle_failed = asyncio.get_running_loop().create_future()
        try:
            with eager_writes(self.spare, self.settle_pending):
                async with asyncio.TaskGroup() as group:
                    producer = group.create_task(self.produce(source, queue, reader))
                    workers = [
                        group.create_task(self.work(queue))
                        for _ in range(self.settings.concurrency)
                    ]
                    enforcer = group.create_task(self.enforce_grace([producer, *workers]))
                    watcher = group.create_task(_raise_when_set(settle_failed))
                    await asyncio.wait([producer, *workers])
                    enforcer.cancel()
                    watcher.cancel()
            if settle_failed.done():  # failed after the last worker ended
                settle_failed.result()
        finally:
            try:
                if not settle_failed.done():
                    self.settle_batch()  # what the last loop iteration settled
            finally:
                self.order.finish()
                # The thread only reads (the id store is used on the loop alone): a read
                # blocked on a silent stdin is left behind.
                reader.shutdown(wait=False, cancel_futures=True)

    async def produce(self, source: Source, queue: Queue, reader: Executor) -> None:
        while not self.control.stopping:
            try:
                if source.blocking:
                    read = await self.read_unless_stopped(source, reader)
                    if read is None:  # stopped while the input was silent
                        break
                    block = read
                else:
                    block = source.read_block()
            except OSError as exc:
                # What was read is still sent; then the run stops as for a fatal answer:
                # the summary says why, and a rerun continues.
                self.input_failure = _input_stop(exc)
                break
            if not block:
                self.stats.input_complete = True
                break
            # A slice at a time, with a turn for the loop after each: parsing a whole
            # block (or lines that are all invalid or done) must not stall answers. The
            # producer waits for room once per slice, not once per request.
            for start in range(0, len(block), PARSE_BATCH):
                for item in source.parse(block[start : start + PARSE_BATCH]):
                    if self.control.stopping:
                        break
                    # No coroutine unless the input-order window is full.
                    seq = self.order.admit_now()
                    if seq is None:
                        seq = await self.order.admit()
                    self.admit(seq, item, queue)
                if self.control.stopping:
                    break
                await queue.wait_for_room()
                await asyncio.sleep(0)
        # One end marker per worker (the queue takes them without waiting).
        for _ in range(self.settings.concurrency):
            queue.put(None)

    async def read_unless_stopped(self, source: Source, reader: Executor) -> Sequence[Any] | None:
        """The source's next block, or None if the run stops first: a read may wait on a
        silent stdin (or on the parser process waiting on one) for as long as the
        writer likes, and is then left to its thread, which the run does not wait for."""
        read = await self.control.unless_stopped(
            asyncio.wrap_future(reader.submit(source.read_block))
        )
        return None if read is None else read.result()

    def admit(self, seq: int, item: Item, queue: Queue) -> None:
        self.stats.read += 1
        if isinstance(item, InvalidLine):
            self.order.done(seq, invalid_record(item))
            self.stats.add_invalid(item.code)
            self.on_progress(self.stats)
        elif self.is_done(item):
            self.order.done(seq, None)
            self.stats.skipped += 1
            self.on_progress(self.stats)
        else:
            queue.put((seq, item))
            self.stats.queued += 1

    async def work(self, queue: Queue) -> None:
        while (entry := await queue.get()) is not None:
            seq, request = entry
            if self.control.stopping:
                self.order.done(seq, None)  # not sent: counted as queued but unfinished
                continue
            sent = await self.send(request)
            if sent is None:
                self.order.done(seq, None)
                continue
            if not self.unsettled:
                asyncio.get_running_loop().call_soon(self.settle_pending)
            self.unsettled.append((seq, sent))

    def settle_pending(self) -> bool:
        """:meth:`settle_batch` for callers that cannot raise (a loop callback, the task
        factory of :mod:`batchib.eagerwrite`): an error ends the run instead. True when
        everything settled so far is recorded (so a body may leave at once)."""
        try:
            self.settle_batch()
        except Exception as exc:  # an unwritable output, or a bug: either ends the run
            if self.settle_failed is not None and not self.settle_failed.done():
                self.settle_failed.set_exception(exc)
            return False
        return self.settle_failed is None or not self.settle_failed.done()

    def settle_batch(self) -> None:
        """Count and record every request settled in this loop iteration.

        Together, not one by one as each answer arrives: between two answers aiohttp
        runs through enough memory that the stats and the record code start cold each
        time, and recording a batch in one go measured about 6 µs a request cheaper.
        Limits, budget, breaker and stops still react to each answer as it arrives.

        The records reach the kernel before any request started in this iteration
        writes its body, so a kill -9 re-sends only requests in flight: on Python 3.11
        aiohttp writes a body from a task that runs in the next iteration, after this
        callback, unless :mod:`batchib.eagerwrite` writes it at once, which settles
        first; where aiohttp writes the body at once itself (3.12+), send() settles
        first.
        """
        if not self.unsettled:
            return
        batch, self.unsettled = self.unsettled, []
        stats, done = self.stats, self.order.done
        for seq, sent in batch:
            reply = sent.reply
            if reply.verdict is Verdict.SUCCESS:
                assert reply.body is not None
                stats.add_success(
                    sent.request.model, reply.body, sent.prompt_tokens, sent.counter_name
                )
                stats.latency.add(reply.latency_ms)
            else:
                stats.add_failure(reply.code)
            done(seq, request_record(sent.request, reply, sent.attempts, sent.elapsed_ms))
        # To the kernel before any request started in this iteration is written to its
        # socket: a kill -9 then re-sends only what was in flight, never what was answered.
        self.order.flush()
        self.on_progress(stats)
        if not BODY_WRITTEN_AT_ONCE:  # where aiohttp writes eagerly itself, no need
            self.spare.update()

    async def send(self, request: Request) -> _Sent | None:
        """Every attempt of one request; the last one decides its record. None when the
        run stopped before the first attempt left (nothing sent: left for a rerun)."""
        started = time.perf_counter()
        attempt = 0
        last: Reply | None = None
        cap = request.completion_cap or 0
        while True:
            # Per attempt: exact counting may have started since the last one.
            counter = self.token_counter(request)
            prompt_tokens = (
                request.rough_prompt_tokens
                if counter is ROUGH_COUNTER
                else estimate_prompt_tokens(request.body, counter)
            )
            tokens = prompt_tokens + cap
            ticket = self.limits.admit_now(tokens) or await self.acquire_unless_stopped(tokens)
            reservation = None
            if ticket is not None and self.budget is not None and not self.control.stopping:
                granted = await self.budget.admit(request.model, request.body, prompt_tokens)
                if isinstance(granted, str):
                    self.control.request_stop(_budget_stop(granted))
                else:
                    reservation = granted
            if ticket is None or self.control.stopping:
                # Admission may have waited (a bucket, a header hold, the budget): a stop
                # decided meanwhile means nothing more leaves.
                if reservation is not None and self.budget is not None:
                    self.budget.release(reservation)
                if last is None:
                    return None
                reply = last
                break
            attempt += 1
            if BODY_WRITTEN_AT_ONCE and self.unsettled:
                self.settle_batch()  # see settle_batch: records before the next body
            try:
                reply = await self.client.send(request.body_bytes)
            except asyncio.CancelledError:
                # The grace period is over: the request may have reached the gateway.
                self.stats.attempts += 1
                self.stats.cancelled_in_flight += 1
                if reservation is not None and self.budget is not None:
                    self.budget.settle(reservation, None, None, unknown=True)
                raise
            last = reply
            usage = reply.billed_usage()
            unknown = usage is None and reply.charge_unknown()
            if unknown and reply.status is not None:
                self.stats.answers_without_usage += 1
            if reservation is not None and self.budget is not None:
                served = reply.body.get("model") if reply.body else None
                self.budget.settle(
                    reservation,
                    served if isinstance(served, str) else None,
                    usage,
                    unknown=unknown,
                )
            self.limits.observe(ticket, reply, request.completion_cap)
            self.stats.attempts += 1
            if self.breaker is not None and (trip := self.breaker.record(reply)):
                self.control.request_stop(_breaker_stop(trip))
            if reply.status == 429:
                self.stats.rate_limited += 1
            if reply.verdict is Verdict.SUCCESS:
                break
            if reply.verdict is Verdict.STOP_RUN:
                self.control.request_stop(_fatal_stop(reply))
            if (
                reply.verdict is not Verdict.RETRY
                or attempt >= self.settings.max_attempts
                or self.control.stopping
            ):
                break
            self.stats.retries += 1
            wait_s = reply.retry_after_s
            # A stop (a fatal answer, a budget, Ctrl-C) ends the wait: nothing more will
            # be sent, and the run must not outlast it by a Retry-After.
            await self.control.unless_stopped(
                self.sleep(backoff_s(attempt, self.rng) if wait_s is None else wait_s)
            )
        elapsed_ms = (time.perf_counter() - started) * 1000
        return _Sent(request, reply, attempt, elapsed_ms, prompt_tokens, counter.name)

    async def acquire_unless_stopped(self, tokens: int) -> Ticket | None:
        """:meth:`Limits.acquire`, or None if the run stops first: a bucket slowed to a
        request a minute (or a header hold) must not keep a stopped run alive."""
        if self.control.stopping:
            return None
        acquired = await self.control.unless_stopped(self.limits.acquire(tokens))
        return None if acquired is None else acquired.result()

    def token_counter(self, request: Request) -> TokenCounter:
        """Exact counts (the tokenizer: 0.05 s to load, ~65 MB) once tokens matter -- a
        budget, or a token limit configured, announced or learnt from a 429; until then
        the free chars/4 estimate, which only feeds the meters a 429 would consult."""
        if self.budget is not None or self.limits.tokens_limited:
            return counter_for_model(request.model)
        return ROUGH_COUNTER

    async def enforce_grace(self, tasks: list[asyncio.Task[None]]) -> None:
        """After an interrupt, give requests in flight the grace period, then cancel.
        After any other stop they finish on their own -- unless interrupted too."""
        stop = await self.control.wait_stopped()
        if stop.cancels_in_flight:
            await self.control.wait_hurry(self.settings.grace_s)
        else:
            await self.control.wait_hurry(math.inf)
        for task in tasks:
            task.cancel()


async def _raise_when_set(failure: asyncio.Future[None]) -> None:
    # Shielded: cancelling this task at the end of a run must not cancel `failure`,
    # which run() still reads.
    await asyncio.shield(failure)


async def run_batch(
    items: Source | Iterable[Item],
    settings: RunSettings,
    sink: RecordSink,
    *,
    is_done: Callable[[Request], bool] = lambda request: False,
    control: RunControl | None = None,
    on_progress: Callable[[RunStats], None] = lambda stats: None,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    prices: PriceTable | None = None,
    budget: Budget | None = None,
) -> RunOutcome:
    """Send every request in `items`, writing one record per item to `sink`.

    `items` is a :class:`batchib.source.Source` (input files are
    :class:`batchib.source.InputFiles`) or any iterable of parsed lines; either is
    consumed lazily. A plain iterable is consumed on the event loop: one whose next item
    may block (a socket, a slow generator) belongs in a Source with ``blocking = True``.
    Requests for which `is_done` is true are skipped. `sleep` and `rng` are injectable
    so that retry timing can be tested without waiting. A sink may have ``flush()``
    (see :class:`batchib.ordering.RecordSink`).
    """
    control = control or RunControl()
    started = time.perf_counter()
    async with open_client(settings) as client:
        pipeline = _Pipeline(
            settings,
            client,
            sink,
            control,
            is_done,
            on_progress,
            sleep,
            rng or random.Random(),
            prices,
            budget,
        )
        try:
            await pipeline.run(items if isinstance(items, Source) else ItemsInMemory(items))
        except BaseExceptionGroup as group:
            # One of our own errors (unreadable input, unwritable output) ends the run;
            # anything else is a bug and keeps its traceback.
            mine = group.subgroup(BatchibError)
            if mine is not None and mine.exceptions:
                first = mine.exceptions[0]
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from group
            raise
    if pipeline.input_failure is not None:
        control.request_stop(pipeline.input_failure)
    pipeline.stats.reorder_window_full = pipeline.order.window_full
    return RunOutcome(
        pipeline.stats, control.stop, time.perf_counter() - started, pipeline.limits.current()
    )
