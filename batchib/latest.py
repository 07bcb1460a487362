"""Which line of a results file (or several) counts for each custom_id: the latest
success, else the latest failure. Kept in a private temporary SQLite database, so
choosing among tens of millions of lines needs no more memory than choosing among ten.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batchib.results import SUCCEEDED, read_records


def record_status(record: dict[str, Any] | None) -> tuple[str, bool] | None:
    """(custom_id, succeeded) of a result line, or None when it is not a record."""
    if record is None:
        return None
    custom_id = record.get("custom_id")
    own = record.get("batchib")
    if not isinstance(custom_id, str):
        return None
    if isinstance(own, dict):
        return custom_id, own.get("status") == SUCCEEDED
    if "response" not in record and "error" not in record:
        return None  # neither ours nor an OpenAI batch output line
    # A plain OpenAI batch output line (written by another tool): judge by its status.
    response = record.get("response")
    ok = isinstance(response, dict) and response.get("status_code") == 200
    return custom_id, ok


class LatestRecords:
    """Feed every line's position, learn the positions that count."""

    def __init__(self) -> None:
        self.records = 0  # lines that are records, of any custom_id
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -1024;
            CREATE TABLE best (id TEXT PRIMARY KEY, position INTEGER, ok INTEGER)
                WITHOUT ROWID;
            BEGIN;
            """
        )

    def add(self, custom_id: str, position: int, succeeded: bool) -> None:
        self.records += 1
        self._db.execute(
            """
            INSERT INTO best VALUES (?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET position = excluded.position, ok = excluded.ok
            WHERE excluded.ok = 1 OR best.ok = 0
            """,
            (custom_id, position, int(succeeded)),
        )

    def chosen(self, position: int, custom_id: str) -> bool:
        row = self._db.execute("SELECT position FROM best WHERE id = ?", (custom_id,)).fetchone()
        return row is not None and row[0] == position

    def close(self) -> None:
        self._db.close()


def numbered_records(paths: Iterable[Path]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Every non-blank line of every file, parsed, with one running position."""
    position = 0
    for path in paths:
        for record in read_records(path):
            yield position, record
            position += 1


def choose_latest(paths: list[Path]) -> LatestRecords:
    """The first pass over the files: which position counts for each custom_id."""
    latest = LatestRecords()
    for position, record in numbered_records(paths):
        status = record_status(record)
        if status is not None:
            latest.add(status[0], position, status[1])
    return latest
