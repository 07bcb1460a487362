"""`batchib compact`: rewrite a results file to one line per custom_id — the latest
success, else the latest failure — atomically (temporary file, fsync, rename).

Lines that are not records (torn by a crash) are moved to OUTPUT.torn, never dropped.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from batchib.errors import OutputError
from batchib.latest import choose_latest, record_status
from batchib.resultsfile import (
    open_private_append,
    private_mode,
    set_aside_torn_tail,
    torn_path,
)


@dataclass(frozen=True)
class Compaction:
    lines_before: int
    lines_after: int
    set_aside: int  # lines that were not records, moved to OUTPUT.torn


def _raw_lines(path: Path) -> Iterator[bytes]:
    """The non-blank lines, in the order and numbering `read_records` uses."""
    with open(path, "rb") as stream:
        for raw in stream:
            if raw.strip():
                yield raw if raw.endswith(b"\n") else raw + b"\n"


def _parse(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def compact(path: Path) -> Compaction:
    """Compact `path` in place; the caller holds its lock."""
    latest = choose_latest([path])
    if not latest.records and any(True for _ in _raw_lines(path)):
        # Not a results file (an input given by mistake, say): compacting would move
        # every line aside and leave it empty. Refused before anything is touched.
        latest.close()
        raise OutputError(f"{path} holds no results: none of its lines is a record")
    # A torn tail is never a record, so the positions chosen above still hold.
    set_aside_torn_tail(path)
    before = after = aside = 0
    directory = path.parent
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        temp = Path(temp_name)
        try:
            os.chmod(temp, private_mode(directory))
            with os.fdopen(fd, "wb") as out, contextlib.ExitStack() as stack:
                torn: BinaryIO | None = None
                for position, raw in enumerate(_raw_lines(path)):
                    before += 1
                    parsed = _parse(raw)
                    status = record_status(parsed if isinstance(parsed, dict) else None)
                    if status is None:
                        if torn is None:
                            torn = stack.enter_context(open_private_append(torn_path(path)))
                        torn.write(raw)
                        aside += 1
                    elif latest.chosen(position, status[0]):
                        out.write(raw)
                        after += 1
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"cannot compact {path}: {exc.strerror}") from exc
    finally:
        latest.close()
    return Compaction(before, after, aside)
