"""The request log: one JSON line per completions request received, for checking a
client from the server's side (what it sent, how often, how it reacted to errors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the request log.

    Attributes:
        t: Unix time the request was received.
        key: :func:`batchib.simulator.auth.key_hash` of the bearer key, None without one.
        body_sha256: hex SHA-256 of the raw body bytes as received (None if unreadable);
            equal to batchib's ``body_hash`` of the request.
        status: the HTTP status sent; None when the connection was dropped unanswered.
        fault: the injected fault, by its ``x-batchib-fault`` name, or None.
        tokens_charged: tokens charged against the key's tokens per minute.
        model: the model the body asked for; None if the body named none or was never
            read (the request was refused before, e.g. with 401).
        request_id: the ``x-request-id`` sent, None when nothing was sent.
    """

    t: float
    key: str | None
    body_sha256: str | None
    status: int | None
    fault: str | None
    tokens_charged: int
    model: str | None
    request_id: str | None


class RequestLog:
    """An append-only JSON Lines file, open for the life of the application."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def open(self) -> None:
        """Open the file for appending (a restarted simulator keeps the earlier lines)."""
        self._file = self.path.open("ab")

    def write(self, entry: LogEntry) -> None:
        """Append ``entry`` as one line in one write, flushed so readers see it at once.

        After close (shutdown cancelling hung handlers) the entry is dropped: those
        requests got no answer, and the log has already been handed over."""
        if self._file is None:
            return
        self._file.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
        self._file.flush()

    def close(self) -> None:
        """Close the file; further writes are dropped."""
        if self._file is not None:
            self._file.close()
            self._file = None
