"""One run per output: an advisory lock on OUTPUT.lock.

`fcntl.flock` locks belong to the open file and vanish with the process that holds
them, so a run killed with -9 leaves no stale lock behind: the file may stay, but
nobody holds it. The holder writes its pid and start time into the file so that a
second run can say who has it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from batchib.errors import BatchibError, OutputError
from batchib.summary import utc_now


class LockedError(BatchibError):
    """Another run holds the output's lock."""


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


class OutputLock:
    """Held for the whole run: `with OutputLock(output, wait=False): ...`."""

    def __init__(self, output: Path, *, wait: bool = False) -> None:
        self.path = lock_path(output)
        self._wait = wait
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise OutputError(f"cannot create the lock {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self._wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another run"
            os.close(fd)
            raise LockedError(
                f"{self.path.name[: -len('.lock')]} is in use by {holder}; "
                "wait for it, or pass --wait-lock to wait"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {utc_now()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            # Closing releases the lock; the file stays (deleting it would race with a
            # run that has just opened it).
            os.close(self._fd)
            self._fd = None
