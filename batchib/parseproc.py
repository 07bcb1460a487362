"""The input read, parsed and checked for repeated ids by a second process.

Parsing a line (orjson, validation, the body re-encoded and hashed, the duplicate-id
check in SQLite) is CPU work, and on the event loop's thread it competes with the
answers: against an instant server at -c 64, a run whose input was parsed before it
started served 10% more requests per second than one parsing on the loop. A thread
cannot take that work off the loop (it needs the GIL; see :mod:`batchib.source`). A
process can, on the machine's other core.

`batchib run` forks it first thing (:func:`fork_parser`, from :mod:`batchib.launch`),
before aiohttp, click or any thread exists in the process, so that it imports the parsing
code while the main process imports aiohttp. Once the job is known, :meth:`Parser.start`
sends it the inputs and defaults; it reads, parses and checks a slice of lines at a time
(:class:`batchib.source.InputFiles`, the same code as inline) and sends each slice down a
pipe as plain values. The loop unpickles a slice and makes its Requests from those values
without decoding the bodies again (:meth:`batchib.inputs.Request.from_fields`). The pipe
is the back-pressure: the child blocks on a full pipe, memory stays flat.

The child writes nothing but the pipe and holds no lock or output file (it is forked before
any is opened). It ignores SIGINT and SIGTERM: the main process decides how a run stops,
and kills the child when the run ends (:meth:`Parser.close`, which reaps it, so that its
CPU time counts in the command's own). On Linux the kernel kills it if the main process
dies first (PR_SET_PDEATHSIG), so a kill -9 leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from batchib.config import RequestDefaults
from batchib.inputs import InvalidLine, Request

# A frame: one kind byte, the payload's length, the payload.
_HEADER = struct.Struct("!cI")
_ITEMS = b"I"  # a pickled list of Request.fields() tuples and InvalidLines
_ERROR = b"E"  # the input could not be read: the OSError's text
_END = b"Z"  # every line has been sent
_PR_SET_PDEATHSIG = 1
_CHILD_FAILED = 70


@dataclass(frozen=True)
class ParserUsage:
    """What the parser process used, from the kernel when it was reaped."""

    pid: int
    cpu_s: float
    peak_rss_mb: float


def wanted(setting: str | None, cpus: int) -> bool:
    """Whether `batchib run` should parse in a second process: on Linux, with a core to
    spare, unless BATCHIB_PARSER (`setting`) is "inline"."""
    return setting != "inline" and cpus > 1 and sys.platform.startswith("linux")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fork_parser() -> Parser | None:
    """Fork the parser process, waiting for its job; None where that is not safe (a
    thread already running: a fork copies no threads, but may copy a lock one holds)."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return None
    job_read, job_write = os.pipe()
    items_read, items_write = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = _CHILD_FAILED
        try:
            os.close(job_write)
            os.close(items_read)
            status = _child(parent, job_read, items_write)
        finally:
            os._exit(status)
    os.close(job_read)
    os.close(items_write)
    return Parser(pid, job_write, items_read)


class Parser:
    """The main process's handle on the parser process."""

    def __init__(self, pid: int, job_fd: int, items_fd: int) -> None:
        self.pid = pid
        self._job_fd: int | None = job_fd
        self._items = os.fdopen(items_fd, "rb")
        self.usage: ParserUsage | None = None

    def start(
        self,
        paths: Iterable[str],
        defaults: RequestDefaults,
        shard: tuple[int, int] | None = None,
    ) -> ParsedElsewhere:
        """Send the child its job; the Source of what it parses."""
        job = (
            list(paths),
            (
                defaults.model,
                defaults.system,
                defaults.max_tokens,
                defaults.temperature,
                dict(defaults.params),
            ),
            shard,
        )
        assert self._job_fd is not None, "a parser process takes one job"
        with open(self._job_fd, "wb") as stream:  # closed: the child reads to the end
            self._job_fd = None
            with contextlib.suppress(BrokenPipeError):  # it died: reading will say so
                stream.write(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        return ParsedElsewhere(self._items, self.pid)

    def close(self) -> ParserUsage:
        """Stop the child (finished or not), reap it and note what it used."""
        if self.usage is not None:
            return self.usage
        if self._job_fd is not None:  # never started: it exits on its own
            os.close(self._job_fd)
            self._job_fd = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        _, _, rusage = os.wait4(self.pid, 0)
        # Dead, so a read still blocked in the reader thread has returned: the close
        # does not wait on it.
        self._items.close()
        self.usage = ParserUsage(
            self.pid, rusage.ru_utime + rusage.ru_stime, rusage.ru_maxrss / 1024
        )
        return self.usage


class ParsedElsewhere:
    """What the parser process sends, as a :class:`batchib.source.Source`."""

    blocking = True  # reading waits for the child

    def __init__(self, stream: BinaryIO, pid: int) -> None:
        self._stream = stream
        self._pid = pid

    def read_block(self) -> list[bytes]:
        """One frame's pickled items ([] at the end). An input the child could not read
        raises its OSError here, after the lines before it."""
        header = self._stream.read(_HEADER.size)
        kind, size = _HEADER.unpack(header) if len(header) == _HEADER.size else (b"", 0)
        payload = self._stream.read(size) if size else b""
        if kind == _ITEMS and len(payload) == size:
            return [payload]
        if kind == _END:
            return []
        if kind == _ERROR:
            raise OSError(payload.decode("utf-8", "replace"))
        raise OSError(f"the input parser (process {self._pid}) ended unexpectedly")

    def parse(self, block: Sequence[Any]) -> list[Request | InvalidLine]:
        from_fields = Request.from_fields
        return [
            from_fields(row) if type(row) is tuple else row
            for payload in block
            for row in pickle.loads(payload)
        ]


def _child(parent: int, job_fd: int, items_fd: int) -> int:
    """The parser process: its job from `job_fd`, frames to `items_fd`; the exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with(parent)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # a pipe reading the command's stdout must not wait for us
    os.close(devnull)
    # Imported here, while the main process imports aiohttp.
    from batchib.source import PARSE_BATCH, InputFiles

    with open(job_fd, "rb") as stream:
        job = stream.read()
    if not job:  # the run ended before it needed us
        return 0
    paths, (model, system, max_tokens, temperature, params), shard = pickle.loads(job)
    defaults = RequestDefaults(model, system, max_tokens, temperature, params)
    from batchib.idstore import IdStore

    out = open(items_fd, "wb")  # noqa: SIM115 - for the life of the process
    ids = IdStore()
    source = InputFiles(paths, defaults, ids, shard)
    try:
        try:
            while block := source.read_block():
                for start in range(0, len(block), PARSE_BATCH):
                    items = source.parse(block[start : start + PARSE_BATCH])
                    if items:
                        rows = [item.fields() if type(item) is Request else item for item in items]
                        _send(out, _ITEMS, pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            _send(out, _ERROR, str(exc).encode())
            return 0
        except Exception as exc:  # a bug: said in the run's error, not as a traceback here
            _send(out, _ERROR, f"the input parser failed: {type(exc).__name__}: {exc}".encode())
            return _CHILD_FAILED
        _send(out, _END, b"")
        return 0
    except BrokenPipeError:  # the main process stopped reading: the run is over
        return 0
    finally:
        ids.close()


def _send(out: BinaryIO, kind: bytes, payload: bytes) -> None:
    out.write(_HEADER.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when the main process dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the prctl took effect
        os._exit(0)
