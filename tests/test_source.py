"""Reading input files in blocks: line numbers, blank lines, BOMs, long lines, pipes that
deliver lines slowly, duplicates across files, and the progress total."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from batchib.config import RequestDefaults
from batchib.idstore import IdStore
from batchib.inputs import InvalidLine, Request, parse_line
from batchib.source import (
    InputFiles,
    ObjectsInMemory,
    count_lines,
    read_blocks,
    reject_duplicates,
)

MODEL = RequestDefaults(model="gpt-default")
BOM = b"\xef\xbb\xbf"


@pytest.fixture
def ids() -> Iterator[IdStore]:
    store = IdStore()
    yield store
    store.close()


def write(path: Path, *lines: bytes, end: bytes = b"\r\n") -> str:
    path.write_bytes(end.join(lines))
    return str(path)


def summary(items: list[Request | InvalidLine]) -> list[tuple[str, str, str, int]]:
    return [
        (
            "request" if isinstance(item, Request) else item.code,
            item.custom_id,
            item.file,
            item.line,
        )
        for item in items
    ]


def lines_of(paths: list[str], block_bytes: int) -> list[tuple[str, int, bytes]]:
    return [line for block in read_blocks(paths, block_bytes) for line in block]


def test_input_files_number_every_line_and_keep_good_and_bad_apart(
    tmp_path: Path, ids: IdStore
) -> None:
    path = write(
        tmp_path / "mixed.jsonl",
        BOM + b'{"id": "a", "prompt": "one"}',
        b"",
        b'{"id": "b", "prompt": "missing brace"',
        b" \t ",
        b'{"prompt": "three"}',
        b'{"id": "a", "prompt": "again"}',
        b'["not", "an", "object"]',
    )

    items = list(InputFiles([path], MODEL, ids))

    assert summary(items) == [
        ("request", "a", path, 1),
        ("invalid_json", "mixed.jsonl:3", path, 3),
        ("request", "mixed.jsonl:5", path, 5),
        ("duplicate_custom_id", "mixed.jsonl:6", path, 6),
        ("not_an_object", "mixed.jsonl:7", path, 7),
    ]
    first = items[0]
    assert isinstance(first, Request)
    assert first.body == {"model": "gpt-default", "messages": [{"role": "user", "content": "one"}]}
    duplicate = items[3]
    assert isinstance(duplicate, InvalidLine)
    assert duplicate.message == f"custom_id 'a' was already used at {path}:1"


def test_duplicate_custom_id_across_files_names_the_first_file_and_line(
    tmp_path: Path, ids: IdStore
) -> None:
    first = write(
        tmp_path / "first.jsonl", b'{"id": "p", "prompt": "1"}', b'{"id": "x", "prompt": "2"}'
    )
    second = write(tmp_path / "second.jsonl", BOM + b'{"id": "x", "prompt": "3"}', end=b"\n")

    items = list(InputFiles([first, second], MODEL, ids))

    assert summary(items) == [
        ("request", "p", first, 1),
        ("request", "x", first, 2),
        ("duplicate_custom_id", "second.jsonl:1", second, 1),
    ]
    duplicate = items[2]
    assert isinstance(duplicate, InvalidLine)
    assert duplicate.message == f"custom_id 'x' was already used at {first}:2"


def test_a_bad_line_that_repeats_an_id_keeps_its_reason_and_gives_up_the_id(
    tmp_path: Path, ids: IdStore
) -> None:
    path = write(
        tmp_path / "dup.jsonl",
        b'{"id": "Y", "prompt": "ok"}',
        b'{"id": "Y", "messages": []}',
    )

    items = list(InputFiles([path], MODEL, ids))

    assert summary(items) == [
        ("request", "Y", path, 1),
        ("empty_messages", "dup.jsonl:2", path, 2),
    ]
    bad = items[1]
    assert isinstance(bad, InvalidLine)
    assert bad.message.endswith(f"; and its custom_id 'Y' was already used at {path}:1")


def test_every_record_of_a_repeat_has_an_id_no_other_line_has(tmp_path: Path, ids: IdStore) -> None:
    # Line 1 names itself as line 2's positional id would be; line 4 names itself as
    # line 3's; the second file has the first's base name and no ids. No record may share
    # an id with another line's.
    path = write(
        tmp_path / "col.jsonl",
        b'{"id": "col.jsonl:2", "prompt": "one"}',
        b'{"id": "col.jsonl:2", "prompt": "two"}',
        b'{"id": "col.jsonl:2", "prompt": "three"}',
        b'{"id": "col.jsonl:3", "prompt": "four"}',
    )
    (tmp_path / "other").mkdir()
    again = write(tmp_path / "other" / "col.jsonl", b'{"prompt": "five"}', b'{"prompt": "six"}')

    items = list(InputFiles([path, again], MODEL, ids))

    assert summary(items) == [
        ("request", "col.jsonl:2", path, 1),
        ("duplicate_custom_id", "col.jsonl:2#2", path, 2),
        ("duplicate_custom_id", "col.jsonl:3", path, 3),
        ("duplicate_custom_id", "col.jsonl:4", path, 4),
        ("request", "col.jsonl:1", again, 1),
        ("duplicate_custom_id", "col.jsonl:2#3", again, 2),
    ]
    four = items[3]
    assert isinstance(four, InvalidLine)
    assert four.message == f"custom_id 'col.jsonl:3' was already used at {path}:3"
    # Line by line, as a slice of one line at a time would check them: the same ids.
    one_by_one = IdStore()
    try:
        lines = [
            parse_line(raw, file, number, MODEL)
            for block in read_blocks([path, again])
            for file, number, raw in block
        ]
        alone = [item for line in lines for item in reject_duplicates([line], one_by_one)]
    finally:
        one_by_one.close()
    assert summary(alone) == summary(items)


def test_utf8_bom_is_only_stripped_from_the_first_line(tmp_path: Path, ids: IdStore) -> None:
    path = write(tmp_path / "bom.jsonl", BOM + b'{"prompt": "1"}', BOM + b'{"prompt": "2"}')

    items = list(InputFiles([path], MODEL, ids))

    assert summary(items) == [
        ("request", "bom.jsonl:1", path, 1),
        ("invalid_json", "bom.jsonl:2", path, 2),
    ]


@pytest.mark.parametrize("block_bytes", [1, 3, 7, 64, 1 << 18])
def test_blocks_hold_the_non_blank_lines_with_their_numbers_at_any_block_size(
    tmp_path: Path, block_bytes: int
) -> None:
    long = b'{"prompt": "' + b"x" * 100 + b'"}'
    path = write(tmp_path / "in.jsonl", BOM + b'{"a": 1}', b"", b"  ", long, b'{"b": 2}')

    assert lines_of([path], block_bytes) == [
        (path, 1, b'{"a": 1}\r'),
        (path, 4, long + b"\r"),
        (path, 5, b'{"b": 2}'),
    ]


@pytest.mark.parametrize("block_bytes", [1, 5, 1 << 18])
def test_a_file_of_one_line_without_a_newline_is_read(tmp_path: Path, block_bytes: int) -> None:
    path = write(tmp_path / "one.jsonl", BOM + b'{"a": 1}')

    assert lines_of([path], block_bytes) == [(path, 1, b'{"a": 1}')]


def test_a_block_ends_at_its_last_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", b"{}", b"{}", b"{}", end=b"\n")

    blocks = list(read_blocks([path], 7))  # "{}\n{}\n{" then "}"

    assert [[number for _, number, _ in block] for block in blocks] == [[1, 2], [3]]


def test_count_lines_counts_non_blank_lines_of_all_files(tmp_path: Path) -> None:
    one = write(tmp_path / "one.jsonl", b"{}", b"", b"{}", b"\t", b"{}", b"")
    two = write(tmp_path / "two.jsonl", b"", b"{}", end=b"\n")
    empty = write(tmp_path / "empty.jsonl")

    assert count_lines([one]) == 3
    assert count_lines(iter([one, two, empty])) == 4
    assert count_lines([empty]) == 0


@pytest.mark.parametrize("paths", [["-"], ["a.jsonl", "-"]])
def test_count_lines_is_unknown_when_reading_stdin(paths: list[str]) -> None:
    assert count_lines(paths) is None


def test_lines_from_a_pipe_are_taken_as_they_arrive_and_stdin_is_left_open(
    monkeypatch: pytest.MonkeyPatch, ids: IdStore
) -> None:
    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "rb")
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=stdin))
    source = InputFiles(["-"], MODEL, ids)
    try:
        os.write(write_end, b'{"prompt": "one"}\n{"prompt": "two"}\n{"prompt": "thr')
        with ThreadPoolExecutor(1) as pool:
            # The writer is still open: the first block must not wait for more.
            block = pool.submit(source.read_block).result(timeout=10)
            assert [number for _, number, _ in block] == [1, 2]
            os.write(write_end, b'ee"}\n')
            os.close(write_end)
            write_end = -1
            rest = pool.submit(source.read_block).result(timeout=10)
            assert summary(source.parse(rest)) == [("request", "stdin:3", "-", 3)]
            assert pool.submit(source.read_block).result(timeout=10) == []
        assert not stdin.closed  # stdin is not ours to close
    finally:
        if write_end >= 0:
            os.close(write_end)
        stdin.close()


def test_objects_in_memory_are_numbered_and_checked_for_repeats(ids: IdStore) -> None:
    source = ObjectsInMemory(
        [{"id": "a", "prompt": "1"}, {"id": "a", "prompt": "2"}, "text"], MODEL, ids, "<memory>"
    )

    assert summary(list(source)) == [
        ("request", "a", "<memory>", 1),
        ("duplicate_custom_id", "<memory>:2", "<memory>", 2),
        ("not_an_object", "<memory>:3", "<memory>", 3),
    ]
