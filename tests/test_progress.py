"""The progress bar's total is counted in a thread while the run goes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from batchib import cli
from batchib.config import ApiKey, Job, RunSettings
from batchib.progress import ProgressBar


def lines_file(path: Path, count: int) -> str:
    path.write_bytes(b"".join(b'{"prompt": "p%d"}\n\n' % n for n in range(count)))
    return str(path)


def test_the_total_arrives_from_a_thread_without_holding_up_the_loop(tmp_path: Path) -> None:
    source = lines_file(tmp_path / "in.jsonl", 5000)

    async def go() -> tuple[int | None, int | None, int | None]:
        with ProgressBar(None) as bar:
            counted = bar.count_total([source])
            before = bar.total  # the call returned before counting
            total = await asyncio.wait_for(counted, timeout=10)
            return before, total, bar.total

    assert asyncio.run(go()) == (None, 5000, 5000)


def test_stdin_leaves_the_total_unknown() -> None:
    async def go() -> tuple[int | None, int | None]:
        with ProgressBar(None) as bar:
            total = await asyncio.wait_for(bar.count_total(["-"]), timeout=10)
            return total, bar.total

    assert asyncio.run(go()) == (None, None)


@pytest.mark.parametrize(("shard", "counted"), [(None, True), ((1, 2), False)])
def test_a_shard_counts_without_a_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard: tuple[int, int] | None, counted: bool
) -> None:
    # Only the shard's lines are done here, and which ones is known only once parsed.
    job = Job(
        inputs=(lines_file(tmp_path / "in.jsonl", 30),),
        output=tmp_path / "out.jsonl",
        settings=RunSettings(api_key=ApiKey("sk-test-0123456789")),
        shard=shard,
    )
    counts: list[list[str]] = []
    monkeypatch.setattr(ProgressBar, "count_total", lambda bar, paths: counts.append(list(paths)))

    async def go() -> None:
        with cli._progress(job, True):
            pass

    asyncio.run(go())
    assert counts == ([list(job.inputs)] if counted else [])
