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
