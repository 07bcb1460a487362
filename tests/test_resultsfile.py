"""The results file on disk: torn tails set aside, group commit, permissions."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import orjson
import pytest

from batchib import resultsfile
from batchib.errors import OutputError
from batchib.resultsfile import ResultsFile, private_mode, set_aside_torn_tail, torn_path


@pytest.mark.parametrize(
    ("content", "kept", "set_aside"),
    [
        pytest.param(b"", b"", None, id="empty"),
        pytest.param(b'{"a":1}\n{"b":2}\n', b'{"a":1}\n{"b":2}\n', None, id="clean"),
        pytest.param(b'{"a":1}\n{"b":', b'{"a":1}\n', b'{"b":', id="torn-last-line"),
        pytest.param(b'{"a":', b"", b'{"a":', id="only-a-torn-line"),
        pytest.param(
            b'{"a":1}\n{"b":{"c":2}}',
            b'{"a":1}\n{"b":{"c":2}}\n',
            None,
            id="whole-last-record-without-its-newline",
        ),
        pytest.param(b'{"b":{"c":2}', b"", b'{"b":{"c":2}', id="torn-where-a-brace-closes"),
        pytest.param(b'{"a":1}\n[1, 2]', b'{"a":1}\n', b"[1, 2]", id="last-line-not-an-object"),
        pytest.param(
            b'{"a":1}\n' + b"x" * 200_000,
            b'{"a":1}\n',
            b"x" * 200_000,
            id="torn-line-longer-than-a-block",
        ),
    ],
)
def test_torn_tail_is_moved_aside_and_whole_lines_stay(
    tmp_path: Path, content: bytes, kept: bytes, set_aside: bytes | None
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)

    moved = set_aside_torn_tail(path)

    assert path.read_bytes() == kept
    assert moved == (len(set_aside) if set_aside else 0)
    if set_aside is None:
        assert not torn_path(path).exists()
    else:
        assert torn_path(path).read_bytes() == set_aside + b"\n"


def test_torn_tails_of_several_crashes_accumulate(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a":1}\n{"b"')
    set_aside_torn_tail(path)
    path.write_bytes(path.read_bytes() + b'{"c"')
    set_aside_torn_tail(path)

    assert torn_path(path).read_bytes() == b'{"b"\n{"c"\n'


def test_missing_file_has_nothing_to_set_aside(tmp_path: Path) -> None:
    assert set_aside_torn_tail(tmp_path / "none.jsonl") == 0


@pytest.mark.parametrize(
    ("dir_mode", "file_mode"),
    [
        (0o700, 0o600),
        (0o750, 0o640),
        (0o770, 0o660),
        (0o755, 0o644),
        (0o777, 0o666),
        (0o711, 0o644),  # x without r still lets a known name be opened
    ],
)
def test_files_grant_no_class_more_than_the_directory(
    tmp_path: Path, dir_mode: int, file_mode: int
) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    directory.chmod(dir_mode)

    assert private_mode(directory) == file_mode


def test_results_file_is_created_with_the_directory_private_mode(tmp_path: Path) -> None:
    directory = tmp_path / "private"
    directory.mkdir()
    directory.chmod(0o700)
    results = ResultsFile(directory / "out.jsonl")
    results.close()

    assert (directory / "out.jsonl").stat().st_mode & 0o777 == 0o600


def test_records_are_synced_in_groups_and_always_on_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(resultsfile.os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(resultsfile, "FSYNC_EVERY_LINES", 3)
    monkeypatch.setattr(resultsfile, "FSYNC_INTERVAL_S", 3600.0)
    path = tmp_path / "out.jsonl"
    results = ResultsFile(path)

    for i in range(7):
        results.write({"i": i})
    assert len(synced) == 2  # after lines 3 and 6
    results.close()

    assert len(synced) == 3
    assert [orjson.loads(line)["i"] for line in path.read_bytes().splitlines()] == list(range(7))


def test_a_quiet_spell_syncs_the_last_lines_without_another_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(resultsfile.os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(resultsfile, "FSYNC_INTERVAL_S", 0.01)

    async def scenario() -> None:
        results = ResultsFile(tmp_path / "out.jsonl")
        results.write({"i": 0})  # the interval has not passed: a timer is set
        assert synced == []
        await asyncio.sleep(0.05)
        assert len(synced) == 1
        results.close()

    asyncio.run(scenario())


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every os.write the results file makes, in order (the writes still happen)."""
    made: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        made.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(resultsfile.os, "write", spy)
    return made


def test_each_record_is_one_write_call(tmp_path: Path, writes: list[bytes]) -> None:
    results = ResultsFile(tmp_path / "out.jsonl")
    results.write({"custom_id": "a", "text": "x" * 10_000})
    results.close()

    assert len(writes) == 1 and writes[0].endswith(b"}\n")


def test_records_of_one_loop_iteration_go_out_in_one_write_of_whole_lines(
    tmp_path: Path, writes: list[bytes]
) -> None:
    path = tmp_path / "out.jsonl"

    async def scenario() -> None:
        results = ResultsFile(path)
        for i in range(5):
            results.write({"i": i})
        assert writes == []  # handed over at the end of this iteration
        await asyncio.sleep(0)
        assert len(writes) == 1
        assert path.read_bytes().count(b"\n") == 5  # in the file before close or fsync
        results.write({"i": 5})
        await asyncio.sleep(0)
        results.write({"i": 6})
        results.close()  # hands over what is pending

    asyncio.run(scenario())
    assert len(writes) == 3
    assert [orjson.loads(line)["i"] for line in path.read_bytes().splitlines()] == list(range(7))


def test_a_failed_write_in_the_loop_is_raised_by_the_next_write_and_by_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    async def scenario() -> None:
        results = ResultsFile(tmp_path / "out.jsonl")
        monkeypatch.setattr(resultsfile.os, "write", disk_full)
        results.write({"i": 0})
        await asyncio.sleep(0)
        with pytest.raises(OutputError, match="No space left"):
            results.write({"i": 1})
        with pytest.raises(OutputError, match="No space left"):
            results.close()

    asyncio.run(scenario())


def test_group_fsyncs_run_off_the_event_loop_and_close_fsyncs_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    first = threading.Event()

    def fsync(fd: int) -> None:
        threads.append(threading.current_thread().name)
        first.set()

    monkeypatch.setattr(resultsfile.os, "fsync", fsync)
    monkeypatch.setattr(resultsfile, "FSYNC_EVERY_LINES", 3)
    monkeypatch.setattr(resultsfile, "FSYNC_INTERVAL_S", 3600.0)
    path = tmp_path / "out.jsonl"

    async def scenario() -> None:
        results = ResultsFile(path)
        for i in range(4):
            results.write({"i": i})
        await asyncio.sleep(0)  # the write, then a group fsync in its thread
        assert await asyncio.to_thread(first.wait, 10)
        assert len(threads) == 1 and threads[0].startswith("batchib-fsync")
        results.close()  # line 4 is not synced yet: close does it, here

    asyncio.run(scenario())
    assert threads[1] == threading.main_thread().name
    assert [orjson.loads(line)["i"] for line in path.read_bytes().splitlines()] == list(range(4))


def test_lines_written_during_a_group_fsync_get_one_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, second = threading.Event(), threading.Event()
    synced: list[int] = []

    def slow_fsync(fd: int) -> None:
        release.wait(10)
        synced.append(os.fstat(fd).st_size)
        if len(synced) == 2:
            second.set()

    monkeypatch.setattr(resultsfile.os, "fsync", slow_fsync)
    monkeypatch.setattr(resultsfile, "FSYNC_EVERY_LINES", 1)
    path = tmp_path / "out.jsonl"

    async def scenario() -> None:
        results = ResultsFile(path)
        results.write({"i": 0})
        await asyncio.sleep(0)  # the first group fsync starts and blocks
        results.write({"i": 1})
        await asyncio.sleep(0)  # written while it runs: another must follow
        release.set()
        assert await asyncio.to_thread(second.wait, 10)
        assert synced[1] == path.stat().st_size  # the second covered both lines
        results.close()

    asyncio.run(scenario())


def test_a_failed_group_fsync_is_raised_by_the_next_write_and_by_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = threading.Event()

    def broken(fd: int) -> None:
        failed.set()
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(resultsfile.os, "fsync", broken)
    monkeypatch.setattr(resultsfile, "FSYNC_EVERY_LINES", 1)

    async def scenario() -> None:
        results = ResultsFile(tmp_path / "out.jsonl")
        results.write({"i": 0})
        await asyncio.sleep(0)
        assert await asyncio.to_thread(failed.wait, 10)  # the fsync fails in its thread
        with pytest.raises(OutputError, match="Input/output error"):
            for _ in range(500):  # until its callback has reached the loop
                await asyncio.sleep(0.01)
                results.write({"i": 1})
        with pytest.raises(OutputError, match="Input/output error"):
            results.close()

    asyncio.run(scenario())


def test_after_a_failed_flush_nothing_more_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = resultsfile.os.write
    failed = False

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        nonlocal failed
        if not failed:
            failed = True
            real_write(fd, bytes(data)[:5])  # part of a line reaches the file
            raise OSError(28, "No space left on device")
        return int(real_write(fd, data))

    monkeypatch.setattr(resultsfile.os, "write", short_then_full)
    path = tmp_path / "out.jsonl"

    async def scenario() -> None:
        results = ResultsFile(path)
        results.write({"i": 0})
        with pytest.raises(OutputError, match="No space left"):
            results.flush()
        with pytest.raises(OutputError, match="No space left"):
            results.write({"i": 1})
        with pytest.raises(OutputError, match="No space left"):
            results.flush()
        with pytest.raises(OutputError, match="No space left"):
            results.close()

    asyncio.run(scenario())
    assert path.read_bytes() == b'{"i":'  # the torn fragment, and nothing after it
