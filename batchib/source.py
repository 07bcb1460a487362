"""The input as the pipeline takes it: raw lines read in blocks by blocking I/O, apart
from parsing them into requests.

The split is the point. Reading may block (a slow disk, a pipe whose writer is thinking),
so it happens off the event loop; parsing, validation and the duplicate check are pure
CPU and happen on the loop, where they cost no thread hand-over. When the reader thread
parsed too, it and the event loop fought over the GIL on every SQLite call and every
switch interval: measured at about 12 µs of CPU per request, 7% of the whole client.
A thread that only reads hands over one block per :data:`BLOCK_BYTES`. Where it can,
`batchib run` takes the parsing off the loop altogether: :mod:`batchib.parseproc` runs
:class:`InputFiles` in a second process.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from batchib.config import RequestDefaults
from batchib.idstore import IdStore
from batchib.inputs import (
    STDIN,
    InvalidLine,
    Request,
    open_input,
    parse_line,
    parse_object,
    positional_id,
    shard_of,
)

BLOCK_BYTES = 1 << 18  # the most one read returns; a pipe returns what it has
PARSE_BATCH = 256  # lines parsed (and checked for repeats, in one statement) at a time
UTF8_BOM = b"\xef\xbb\xbf"

Item = Request | InvalidLine
RawLine = tuple[str, int, bytes]  # file, line number (from 1), the line without its "\n"


@runtime_checkable
class Source(Protocol):
    """What :func:`batchib.runner.run_batch` consumes."""

    # read_block may block (files, pipes): the pipeline calls it off the event loop.
    blocking: bool

    def read_block(self) -> Sequence[Any]:
        """The next block of raw input; empty at the end."""
        ...

    def parse(self, block: Sequence[Any]) -> list[Item]:
        """Items for (a slice of) a block, in input order."""
        ...


def read_blocks(paths: Iterable[str], block_bytes: int = BLOCK_BYTES) -> Iterator[list[RawLine]]:
    """The non-blank lines of every input with their numbers, a block at a time.

    One block is what one read returned, cut at its last newline, so the lines a pipe's
    writer has written are taken as soon as they arrive, not once a buffer fills. A line
    longer than a block is assembled from several reads. Blank lines are counted, not
    yielded; a UTF-8 BOM is dropped from a file's first line.
    """
    for path in paths:
        stream = open_input(path)
        try:
            number = 0
            pending: list[bytes] = []  # the start of a line still being read
            while data := stream.read1(block_bytes):
                parts = data.split(b"\n")
                tail = parts.pop()
                if not parts:  # no newline yet: all of it belongs to one long line
                    pending.append(data)
                    continue
                if pending:
                    pending.append(parts[0])
                    parts[0] = b"".join(pending)
                    pending = []
                if tail:
                    pending.append(tail)
                if lines := _numbered(path, number, parts):
                    yield lines
                number += len(parts)
            if pending and (lines := _numbered(path, number, [b"".join(pending)])):
                yield lines
        finally:
            if path != STDIN:
                stream.close()


def _numbered(path: str, before: int, raws: list[bytes]) -> list[RawLine]:
    """The non-blank lines of `raws` (lines `before` + 1, ... of `path`), numbered; a
    UTF-8 BOM dropped from the file's first line."""
    if before == 0 and raws[0].startswith(UTF8_BOM):
        raws[0] = raws[0][len(UTF8_BOM) :]
    return [(path, before + i, raw) for i, raw in enumerate(raws, start=1) if raw.strip()]


def reject_duplicates(items: Sequence[Item], ids: IdStore) -> list[Item]:
    """`items`, with a line that repeats an earlier line's custom_id made invalid (one
    SQLite statement for the lot when none repeats; else line by line, in input order,
    so that the ids given do not depend on where the input was cut into slices).

    Its record gets an id of its own, never the repeated one: readers matching on
    custom_id (a rerun, `report`, `compact`) must not see the first line's result
    replaced by it. A line already invalid for another reason keeps its reason, and the
    repeat is added to it."""
    if ids.claim_all([(item.custom_id, item.file, item.line) for item in items]):
        return list(items)
    checked: list[Item] = []
    for item in items:
        if (first := ids.first_use(item.custom_id, item.file, item.line)) is not None:
            repeat = f"custom_id {item.custom_id!r} was already used at {first.file}:{first.line}"
            code, message = (
                (item.code, f"{item.message}; and its {repeat}")
                if isinstance(item, InvalidLine)
                else ("duplicate_custom_id", repeat)
            )
            item = InvalidLine(_unused_id(item, ids), item.file, item.line, code, message)
        checked.append(item)
    return checked


def _unused_id(item: Item, ids: IdStore) -> str:
    """An id no line has used so far, now taken by `item`: its positional id, or that
    with "#2", "#3", ... when another line already named itself so."""
    base = positional_id(item.file, item.line)
    candidate, n = base, 1
    while ids.first_use(candidate, item.file, item.line) is not None:
        n += 1
        candidate = f"{base}#{n}"
    return candidate


def count_lines(paths: Iterable[str]) -> int | None:
    """Number of non-blank lines in the inputs (a progress total), or None for stdin."""
    paths = list(paths)
    if STDIN in paths:
        return None
    return sum(len(block) for block in read_blocks(paths))


class InputFiles:
    """JSONL input files (or stdin, "-") as a :class:`Source`, optionally one shard.

    Iterating it reads and parses in turn, for callers without an event loop.
    """

    blocking = True

    def __init__(
        self,
        paths: Iterable[str],
        defaults: RequestDefaults,
        ids: IdStore,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self._blocks = read_blocks(list(paths))
        self._defaults = defaults
        self._ids = ids
        self._shard = shard

    def read_block(self) -> list[RawLine]:
        return next(self._blocks, [])

    def parse(self, block: Sequence[Any]) -> list[Item]:
        defaults = self._defaults
        items = reject_duplicates(
            [parse_line(raw, file, number, defaults) for file, number, raw in block], self._ids
        )
        if self._shard is None:
            return items
        # Every machine reads (and checks for repeats) the whole input; each line is
        # sent by exactly one shard.
        index, count = self._shard
        return [item for item in items if shard_of(item.custom_id, count) == index]

    def __iter__(self) -> Iterator[Item]:
        while block := self.read_block():
            for start in range(0, len(block), PARSE_BATCH):
                yield from self.parse(block[start : start + PARSE_BATCH])


class ItemsInMemory:
    """Items already parsed (or decoded lines to parse) as a :class:`Source` that never
    blocks: tests, and small batches sent from Python."""

    blocking = False

    def __init__(self, items: Iterable[Item]) -> None:
        self._items = iter(items)

    def read_block(self) -> list[Item]:
        return list(itertools.islice(self._items, PARSE_BATCH))

    def parse(self, block: Sequence[Any]) -> list[Item]:
        return list(block)


class ObjectsInMemory:
    """Lines already decoded (dicts in any of the formats), numbered from 1 under
    `name`, as a :class:`Source` that never blocks."""

    blocking = False

    def __init__(
        self, objects: Iterable[Any], defaults: RequestDefaults, ids: IdStore, name: str
    ) -> None:
        self._numbered = enumerate(objects, start=1)
        self._defaults = defaults
        self._ids = ids
        self._name = name

    def read_block(self) -> list[tuple[int, Any]]:
        return list(itertools.islice(self._numbered, PARSE_BATCH))

    def parse(self, block: Sequence[Any]) -> list[Item]:
        return reject_duplicates(
            [parse_object(obj, self._name, number, self._defaults) for number, obj in block],
            self._ids,
        )

    def __iter__(self) -> Iterator[Item]:
        while block := self.read_block():
            yield from self.parse(block)
