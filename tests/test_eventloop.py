"""The event loop a run goes on, and the garbage collector's settings while it runs."""

from __future__ import annotations

import gc

import pytest

from batchib import eventloop


def test_collections_are_rarer_and_imports_frozen_during_a_run_then_restored() -> None:
    before = gc.get_threshold()
    seen: list[tuple[tuple[int, ...], int]] = []

    async def main() -> str | None:
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        return eventloop.running_loop_name()

    name = eventloop.run(main())

    ((during, frozen),) = seen
    assert during == (eventloop.YOUNG_COLLECTION_EVERY, *before[1:])
    assert frozen > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert name in {"uvloop", "asyncio"}


def test_settings_are_restored_when_the_run_fails() -> None:
    before = gc.get_threshold()

    async def main() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        eventloop.run(main())

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_batchib_event_loop_asyncio_turns_uvloop_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHIB_EVENT_LOOP", "asyncio")

    async def main() -> str | None:
        return eventloop.running_loop_name()

    assert eventloop.loop_factory() is None
    assert eventloop.run(main()) == "asyncio"


# A fresh interpreter: a process that has already freed a large block has the threshold
# raised. 2,000 ping-pongs on asyncio's loop, counting minor page faults.
READS_PROBE = """
import asyncio, json, resource, sys
from batchib import eventloop
if sys.argv[1] == "prepared":
    eventloop.heap_for_large_reads()

class Pong(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(b"x" * 300)

class Ping(asyncio.Protocol):
    def __init__(self, done):
        self.done, self.left = done, 2000
    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"?")
    def data_received(self, data):
        self.left -= 1
        if self.left:
            self.transport.write(b"?")
        else:
            self.done.set_result(None)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Pong, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    done = loop.create_future()
    await loop.create_connection(lambda: Ping(done), "127.0.0.1", port)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    await done
    print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))

asyncio.run(main())
"""


def test_asyncio_reads_reuse_heap_memory_instead_of_mapping_fresh_pages() -> None:
    from tests.test_cacerts import in_a_fresh_interpreter

    unprepared = in_a_fresh_interpreter(READS_PROBE, "unprepared")
    if unprepared < 2000:
        pytest.skip(f"this allocator does not map each read ({unprepared} page faults)")

    prepared = in_a_fresh_interpreter(READS_PROBE, "prepared")

    assert prepared < unprepared / 4, (prepared, unprepared)
