"""The benchmark's server: one canned chat completion for every request, optionally late.

A bare asyncio protocol (uvloop when installed), not aiohttp and not the simulator: it
parses only the request head and Content-Length and writes bytes prepared once, so it
costs a few hundredths of a millisecond per request and leaves the other core to the
client being measured. nginx would do as well for instant replies, but needs root to
install and cannot add latency; the simulator (aiohttp, validation, tokenizer) costs about
0.2 ms per request, as much as the clients it would be measuring.

Each reply carries the same usage, so a client's output can be checked: N requests must
add up to N times these token counts.

Instant replies run on uvloop when installed (the cheapest loop per request). Late
replies run on asyncio's loop over select(), whose timeout is in microseconds: a reply
must leave no sooner than --latency-ms after its request and as little later as can be,
or the ceiling concurrency / latency would not hold for any client. uvloop's timers
count whole milliseconds. Measured at 20 ms and c=64 (180,000 replies), uvloop held
them 19.02-34.7 ms, some early, and a request that arrived waited about 0.5 ms longer to
be read; the select loop held them 20.009-24.2 ms (mean 20.10-20.12), and the wire client
went from 93.4-93.8% to 96.0-96.7% of the ceiling by wall time, the floor from 83% to
92-93%. The select loop costs more per request, which late replies leave room for.
(epoll, asyncio's default selector, also counts milliseconds.)

It writes its URL to --port-file once listening, serves until SIGTERM/SIGINT, and then
prints one JSON line to stdout: requests answered. With --stats-file, each SIGUSR1 writes
there the answers since the last one, with the times of the first and the last (the
monotonic clock, in seconds), and how long the late replies were held (shortest, mean and
longest, in ms), and starts counting again: the rate a client kept up once running,
without its start-up and exit.

    python bench/canned_server.py --port-file FILE [--latency-ms 20] [--stats-file FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
import signal
import time
from pathlib import Path
from typing import cast

PROMPT_TOKENS = 14
COMPLETION_TOKENS = 9

BODY = json.dumps(
    {
        "id": "chatcmpl-canned",
        "object": "chat.completion",
        "created": 1764000000,
        "model": "gpt-5.4-mini-2026-03-17",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Rayleigh scattering of sunlight."},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        },
        "system_fingerprint": "fp_canned",
    },
    separators=(",", ":"),
).encode()

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Connection: keep-alive\r\n"
    b"x-request-id: req_canned\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


class Counter:
    def __init__(self) -> None:
        self.answered = 0
        # Since the last SIGUSR1: answers, and the times of the first and the last.
        self.since = 0
        self.first_s = 0.0
        self.last_s = 0.0
        self.reports = 0

        # Late replies since the last report: how long each was held, in seconds.
        self.held_min_s = self.held_max_s = self.held_total_s = 0.0

    def count(self) -> None:
        now = time.monotonic()
        if not self.since:
            self.first_s = now
        self.last_s = now
        self.since += 1
        self.answered += 1

    def held(self, seconds: float) -> None:
        """A late reply leaves, `seconds` after its request was read whole."""
        if not self.since or seconds < self.held_min_s:
            self.held_min_s = seconds
        self.held_max_s = max(self.held_max_s, seconds)
        self.held_total_s += seconds

    def report(self, stats_file: Path) -> None:
        """Write the answers since the last report (atomically) and start again."""
        self.reports += 1
        stats = {
            "report": self.reports,
            "answered": self.since,
            "first_s": self.first_s,
            "last_s": self.last_s,
        }
        if self.held_total_s:
            stats["held_ms"] = {
                "min": round(self.held_min_s * 1000, 3),
                "mean": round(self.held_total_s * 1000 / self.since, 3),
                "max": round(self.held_max_s * 1000, 3),
            }
        temp = stats_file.with_suffix(".tmp")
        temp.write_text(json.dumps(stats))
        temp.replace(stats_file)
        self.since = 0
        self.held_min_s = self.held_max_s = self.held_total_s = 0.0


class CannedProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: reads each request whole (head + Content-Length), answers it."""

    def __init__(self, delay_s: float, counter: Counter) -> None:
        self.delay_s = delay_s
        self.counter = counter
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's TCPTransport is not an asyncio.Transport subclass.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:head_end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = head_end + 4 + length
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            if self.delay_s:
                self.loop.call_later(self.delay_s, self.answer_late, self.loop.time())
            else:
                self.answer()

    def answer_late(self, read_at: float) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.counter.held(self.loop.time() - read_at)
            self.answer()

    def answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)
            self.counter.count()


async def serve(port_file: Path, latency_ms: float, stats_file: Path | None) -> int:
    loop = asyncio.get_running_loop()
    counter = Counter()
    server = await loop.create_server(
        lambda: CannedProtocol(latency_ms / 1000, counter), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if stats_file is not None:
        loop.add_signal_handler(signal.SIGUSR1, counter.report, stats_file)
    temp = port_file.with_suffix(".tmp")
    temp.write_text(f"http://127.0.0.1:{port}/v1\n")
    temp.replace(port_file)
    await stop.wait()
    server.close()
    return counter.answered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--stats-file", type=Path)
    args = parser.parse_args()
    serving = serve(args.port_file, args.latency_ms, args.stats_file)
    if args.latency_ms:
        # Timeouts in microseconds (see the module doc); select() takes fds up to 1023,
        # well above the bench's 256 connections.
        with asyncio.Runner(
            loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())
        ) as runner:
            answered = runner.run(serving)
    else:
        try:
            import uvloop  # type: ignore[import-not-found]

            answered = uvloop.run(serving)
        except ImportError:
            answered = asyncio.run(serving)
    print(json.dumps({"answered": answered}), flush=True)


if __name__ == "__main__":
    main()
