"""The wire: what the canned server and loopback allow, with no HTTP library at all.

N keep-alive connections as bare asyncio protocols (on uvloop when installed), each
writing the next request the moment its answer is complete. It builds the same bodies
as the floor, parses each answer (status line, Content-Length, JSON) and writes one
output line per request, so the bench checks it like the others. It handles only what
the canned server sends (no chunked bodies, no redirects, no errors retried): a
reference for the 20 ms cell's ceiling, not a client anyone should use.

    python bench/wire_client.py INPUT OUTPUT BASE_URL MODEL CONCURRENCY

Prints one JSON line: {"succeeded": ..., "failed": ..., "prompt_tokens": ..., ...}.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import IO, cast
from urllib.parse import urlsplit

import orjson


class Totals:
    def __init__(self) -> None:
        self.succeeded = self.failed = self.prompt_tokens = self.completion_tokens = 0


class Connection(asyncio.Protocol):
    def __init__(
        self,
        items: Iterator[tuple[str, bytes]],
        head: bytes,
        output: IO[bytes],
        totals: Totals,
        finished: asyncio.Future[None],
    ) -> None:
        self.items = items
        self.head = head
        self.output = output
        self.totals = totals
        self.finished = finished
        self.buffer = bytearray()
        self.custom_id = ""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.send_next()

    def send_next(self) -> None:
        assert self.transport is not None
        try:
            self.custom_id, body = next(self.items)
        except StopIteration:
            self.transport.close()
            return
        self.transport.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).split(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head[1:]
            if line.lower().startswith(b"content-length:")
        )
        if len(self.buffer) < end + 4 + length:
            return
        payload = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        status = int(head[0].split()[1])
        answer = orjson.loads(payload)
        if status == 200:
            usage = answer.get("usage") or {}
            self.totals.succeeded += 1
            self.totals.prompt_tokens += usage.get("prompt_tokens", 0)
            self.totals.completion_tokens += usage.get("completion_tokens", 0)
            self.output.write(
                orjson.dumps({"custom_id": self.custom_id, "status_code": status, "body": answer})
                + b"\n"
            )
        else:
            self.totals.failed += 1
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


def bodies(source: str, model: str) -> Iterator[tuple[str, bytes]]:
    with open(source, "rb") as stream:
        for line in stream:
            if line.strip():
                item = orjson.loads(line)
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": item["prompt"]}],
                    "max_tokens": item.get("max_tokens", 100),
                }
                yield item["id"], orjson.dumps(body)


async def main() -> int:
    source, target, base_url, model, concurrency = sys.argv[1:6]
    url = urlsplit(base_url.rstrip("/") + "/chat/completions")
    assert url.hostname is not None and url.port is not None
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        "Authorization: Bearer bench-key-not-secret\r\nContent-Type: application/json\r\n"
        "Content-Length: "
    ).encode()
    loop = asyncio.get_running_loop()
    totals = Totals()
    items = bodies(source, model)
    with open(target, "wb") as output:  # noqa: ASYNC230 - a benchmark's local file
        finished = []
        for _ in range(int(concurrency)):
            done: asyncio.Future[None] = loop.create_future()
            finished.append(done)
            await loop.create_connection(
                lambda done=done: Connection(items, head, output, totals, done),
                url.hostname,
                url.port,
            )
        await asyncio.gather(*finished)
    print(orjson.dumps(vars(totals)).decode(), flush=True)
    return 0 if totals.failed == 0 else 3


if __name__ == "__main__":
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    sys.exit(run(main()))
