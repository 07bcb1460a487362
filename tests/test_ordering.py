"""Input order's window: numbers are handed out only while there is room."""

from __future__ import annotations

import asyncio
from typing import Any

from batchib.ordering import CompletionOrder, InputOrder


class ListSink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def test_a_full_window_hands_out_no_number_and_skips_none() -> None:
    sink = ListSink()
    order = InputOrder(sink, window=2)

    assert [order.admit_now(), order.admit_now(), order.admit_now()] == [0, 1, None]
    order.done(1, {"line": 1})  # waits for line 0
    assert order.admit_now() is None and sink.records == []
    order.done(0, {"line": 0})
    assert sink.records == [{"line": 0}, {"line": 1}]
    assert [order.admit_now(), order.admit_now(), order.admit_now()] == [2, 3, None]


def test_completion_order_always_has_room() -> None:
    order = CompletionOrder(ListSink())

    assert [order.admit_now() for _ in range(3)] == [0, 1, 2]


def test_admit_waits_for_room_and_counts_the_full_window_once() -> None:
    async def go() -> tuple[int, int]:
        order = InputOrder(ListSink(), window=1)
        assert await order.admit() == 0
        waiter = asyncio.create_task(order.admit())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not waiter.done()
        order.done(0, {"line": 0})
        return await asyncio.wait_for(waiter, timeout=1), order.window_full

    assert asyncio.run(go()) == (1, 1)
