"""Per-run sets of request ids, kept on disk so memory does not grow with the input.

Two questions are asked of every input line: "was this custom_id already used earlier in
the input?" and "is there already a successful result for this custom_id with this exact
body?". For tens of millions of lines, Python sets would grow by ~100 bytes a line; a
private temporary SQLite database answers both in a few microseconds with a fixed cache.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple


class FirstUse(NamedTuple):
    file: str
    line: int


class IdStore:
    """The ids seen in this run's input, and the (id, body hash) pairs already done."""

    def __init__(self) -> None:
        # "" opens a private on-disk temporary database, deleted on close. The reader
        # thread and the event loop use it in turn, never at once.
        self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -1024;
            CREATE TABLE seen (id TEXT PRIMARY KEY, file TEXT, line INTEGER) WITHOUT ROWID;
            CREATE TABLE done (id TEXT, hash TEXT, PRIMARY KEY (id, hash)) WITHOUT ROWID;
            BEGIN;
            """
        )
        self._any_done = False

    def claim_all(self, uses: list[tuple[str, str, int]]) -> bool:
        """Record every (custom_id, file, line) in one statement and return True when
        none of the ids was used before (the usual case). Otherwise record none of them
        and return False: the caller then asks :meth:`first_use` line by line, so that
        what it does about each repeat comes before the next line's question."""
        if not uses:
            return True
        inserted = self._db.executemany(
            "INSERT INTO seen VALUES (?, ?, ?) ON CONFLICT DO NOTHING", uses
        ).rowcount
        if inserted == len(uses):
            return True
        # (No rollback: the journal is off.) A line is read once, so a row naming one of
        # these lines was inserted just now.
        self._db.executemany("DELETE FROM seen WHERE id = ? AND file = ? AND line = ?", uses)
        return False

    def first_use(self, custom_id: str, file: str, line: int) -> FirstUse | None:
        """Record a use of custom_id; return where it was first used if this is a repeat."""
        cursor = self._db.execute(
            "INSERT INTO seen VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (custom_id, file, line)
        )
        if cursor.rowcount:
            return None
        row = self._db.execute("SELECT file, line FROM seen WHERE id = ?", (custom_id,)).fetchone()
        return FirstUse(row[0], row[1])

    def mark_done(self, custom_id: str, body_hash: str) -> None:
        self._any_done = True
        self._db.execute(
            "INSERT INTO done VALUES (?, ?) ON CONFLICT DO NOTHING", (custom_id, body_hash)
        )

    def is_done(self, custom_id: str, body_hash: str) -> bool:
        if not self._any_done:  # a first run: no query per line
            return False
        row = self._db.execute(
            "SELECT 1 FROM done WHERE id = ? AND hash = ?", (custom_id, body_hash)
        ).fetchone()
        return row is not None

    def done_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM done").fetchone()[0])

    def close(self) -> None:
        self._db.close()
