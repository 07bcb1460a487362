"""The results file on disk: append-only, durable by group commit, crash-tolerant.

Guarantee: each record is handed to the kernel by the end of the event-loop iteration
in which it became known -- the records of one iteration together, in one `write` system
call of whole lines -- so a crashed or killed process (even kill -9) loses nothing it
wrote and can tear at most the last line. (A record not yet handed over when the process
dies is a request whose answer was lost: the next run sends it again.) Records are
fsynced in groups — every :data:`FSYNC_EVERY_LINES` lines or :data:`FSYNC_INTERVAL_S`
seconds, whichever comes first, and always before the summary is written — so a power
loss loses at most that much, and those requests are simply sent again by the next run.
While an event loop runs, those fsyncs happen in a thread of their own: a slow disk
delays durability, never the requests.

A torn last line left by a crash is moved to ``OUTPUT.torn`` before a run appends,
never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from batchib.errors import OutputError

FSYNC_EVERY_LINES = 512
FSYNC_INTERVAL_S = 0.2


def private_mode(directory: Path) -> int:
    """File permissions that grant no class (group, others) more than the directory
    does: results can hold private data, and a 0700 directory means it."""
    try:
        dir_mode = directory.stat().st_mode
    except OSError:
        return 0o600
    mode = 0o600
    if dir_mode & stat.S_IXGRP:
        mode |= 0o060 if dir_mode & stat.S_IWGRP else 0o040
    if dir_mode & stat.S_IXOTH:
        mode |= 0o006 if dir_mode & stat.S_IWOTH else 0o004
    return mode


def open_private_append(path: Path) -> BinaryIO:
    """Open for appending, creating the file with :func:`private_mode` of its directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, private_mode(path.parent))
    return os.fdopen(fd, "ab")


def torn_path(path: Path) -> Path:
    return path.with_name(path.name + ".torn")


def set_aside_torn_tail(path: Path) -> int:
    """Move an unterminated last line (a write cut by a crash) to OUTPUT.torn and cut it
    from the file; the number of bytes moved (0 when the file ends cleanly).

    A last line that is a whole JSON object lost only its newline (a write cut just
    before it, or an edit by hand): it is a record, kept, and the newline is added."""
    try:
        with open(path, "r+b") as stream:
            size = stream.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            # Walk back to the last newline, in blocks: lines can be long.
            end = size
            position = size
            while position > 0:
                step = min(1 << 16, position)
                stream.seek(position - step)
                block = stream.read(step)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    position = position - step + newline + 1
                    break
                position -= step
            if position == end:
                return 0
            stream.seek(position)
            tail = stream.read()
            if _is_object(tail):
                stream.write(b"\n")
                stream.flush()
                os.fsync(stream.fileno())
                return 0
            with open_private_append(torn_path(path)) as torn:
                torn.write(tail + b"\n")
                torn.flush()
                os.fsync(torn.fileno())
            stream.truncate(position)
            stream.flush()
            os.fsync(stream.fileno())
            return len(tail)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise OutputError(f"cannot repair {path}: {exc.strerror}") from exc


def _is_object(line: bytes) -> bool:
    """Whether `line` is one whole JSON object (a proper prefix of one never is)."""
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


class ResultsFile:
    """Append-only writer: one `write` per loop iteration, fsync in groups (module doc)."""

    def __init__(self, path: Path, *, overwrite: bool = False) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if overwrite else 0)
        try:
            self._fd = os.open(path, flags, private_mode(path.parent))
        except OSError as exc:
            raise OutputError(f"cannot open {path} for writing: {exc.strerror}") from exc
        self._unsynced = 0
        self._synced_at = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._failed: OutputError | None = None
        self._pending: list[bytes] = []
        self._syncer: ThreadPoolExecutor | None = None  # made at the first group fsync
        self._syncing: Future[None] | None = None  # the group fsync in that thread
        self._sync_again = False  # lines were written while it ran

    def write(self, record: dict[str, Any]) -> None:
        if self._failed is not None:
            raise self._failed
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (compact, tests): at once
            self._write_all(line)
            self._written(1)
            return
        if not self._pending:
            loop.call_soon(self._flush_pending)
        self._pending.append(line)

    def _flush_pending(self) -> None:
        # A loop callback cannot raise to anyone: keep the error for the next call.
        try:
            self.flush()
        except OutputError as exc:
            self._failed = exc

    def flush(self) -> None:
        """Hand the records written so far to the kernel now, in one `write`."""
        if self._failed is not None:
            # After a failed write nothing more goes out: a short write may have left
            # part of a line, and only a torn *last* line can be set aside later.
            raise self._failed
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self._write_all(lines[0] if len(lines) == 1 else b"".join(lines))
        except OutputError as exc:
            self._failed = exc
            raise
        self._written(len(lines))

    def _written(self, count: int) -> None:
        self._unsynced += count
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (compact, tests): at once
            loop = None
        if (
            self._unsynced >= FSYNC_EVERY_LINES
            or time.monotonic() - self._synced_at >= FSYNC_INTERVAL_S
        ):
            if loop is None:
                self.sync()
            else:
                self._sync_in_background(loop)
        elif self._timer is None and loop is not None:
            # The last lines of a quiet spell must not wait for the next write.
            self._timer = loop.call_later(FSYNC_INTERVAL_S, self._sync_later, loop)

    def _sync_later(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._unsynced:
            self._sync_in_background(loop)

    def _sync_in_background(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a group fsync of every line written so far in the sync thread; with one
        already running, start the next when it ends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._syncing is not None:
            self._sync_again = True
            return
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="batchib-fsync")
        self._unsynced = 0
        self._synced_at = time.monotonic()
        self._syncing = self._syncer.submit(os.fsync, self._fd)

        def on_synced(done: Future[None]) -> None:  # in the sync thread
            # RuntimeError: the loop is closed, and close() waits for this fsync itself.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._synced_in_background, done)

        self._syncing.add_done_callback(on_synced)

    def _synced_in_background(self, done: Future[None]) -> None:
        # A loop callback cannot raise to anyone: keep the error for the next call.
        if done is not self._syncing:
            return  # sync() already waited for it
        self._syncing = None
        error = done.exception()
        if isinstance(error, OSError):
            self._failed = OutputError(f"cannot flush {self.path}: {error.strerror}")
        elif self._sync_again:
            self._sync_again = False
            self._written(0)

    def sync(self) -> None:
        """Make every record written so far durable (waits for a group fsync in the
        sync thread, then fsyncs what came after it)."""
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            try:
                syncing.result()
            except OSError as exc:
                raise OutputError(f"cannot flush {self.path}: {exc.strerror}") from exc
            if self._sync_again:
                self._sync_again = False
                self._unsynced = max(self._unsynced, 1)
        if not self._unsynced:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise OutputError(f"cannot flush {self.path}: {exc.strerror}") from exc
        self._unsynced = 0
        self._synced_at = time.monotonic()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        try:
            if self._failed is not None:
                raise self._failed
            self._unsynced = max(self._unsynced, 1)
            self.sync()
        finally:
            if self._syncer is not None:
                # An fsync still running (sync() raised first) must end before the fd
                # closes: the number could be reused for another file meanwhile.
                self._syncer.shutdown(wait=True)
            os.close(self._fd)
