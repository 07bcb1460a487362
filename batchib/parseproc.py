"""The input read, parsed and checked for repeated ids by a second process.

Parsing a line (orjson, validation, the body re-encoded and hashed, the duplicate-id
check in SQLite) is CPU work, and on the event loop's thread it competes with the
answers: against an instant server at -c 64, a run whose input was parsed before it
started served 10% more requests per second than one parsing on the loop. A thread
cannot take that work off the loop (it needs the GIL; see :mod:`batchib.source`). A
process can, on the machine's other core.

`batchib run` starts it first thing (:func:`spawn_parser`, from :mod:`batchib.launch`),
so that it starts Python and imports the parsing code while the main process imports
aiohttp. It is spawned (a fresh interpreter, ``python -m batchib.parseproc``), not
forked: after a fork every page the main process wrote to was copied on first write,
and a one-line run started 10 ms later (0.244 s against 0.234 s inline, medians of 15;
0.235 s spawned). It also leaves the API key out of the child's environment.

Once the job is known, :meth:`Parser.start` sends it the inputs and defaults. The child
reads, parses and checks a slice of lines at a time (:class:`batchib.source.InputFiles`,
the same code as inline) and sends each slice down a pipe as plain values. The loop
unpickles a slice and makes its Requests from those values without decoding the bodies
again (:meth:`batchib.inputs.Request.from_fields`). The pipe is the back-pressure: the
child blocks on a full pipe, and memory stays flat.

The child writes only to the pipe (and, as parsing inline does, to its id store's
private temporary SQLite file). It holds no lock or output file: it is started before any
is opened, and inherits stdin, stderr (stdout is /dev/null), its two pipes, and only what
the command itself was given to pass on. It never takes SIGINT or SIGTERM (blocked for
its whole life): the main process decides how a run stops, and kills the child when the
run ends (:meth:`Parser.close`, which reaps it, so that its CPU time counts in the
command's own). Whatever stops the child early reaches the run as an error with its
cause. On Linux the kernel kills it if the main process dies first (PR_SET_PDEATHSIG), so
a kill -9 leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn

from batchib.config import RequestDefaults
from batchib.inputs import InvalidLine, Request

# A frame: one kind byte, the payload's length, the payload.
_HEADER = struct.Struct("!cI")
_ITEMS = b"I"  # a pickled list of Request.fields() tuples and InvalidLines
_ERROR = b"E"  # the input could not be read: the OSError's text
_END = b"Z"  # every line has been sent
_PR_SET_PDEATHSIG = 1
_CHILD_FAILED = 70
# The first slice is short: the run's first request waits for it. From the job sent to
# the first request, 5.7 ms with a first slice of PARSE_BATCH lines, 3.1 ms with 8
# (20,000-line input, medians of 11).
FIRST_BATCH = 8
# How long close() waits for the killed child before leaving it to init.
EXIT_WAIT_S = 5.0
# Where this process imported batchib from: the child must have imported the same.
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class ParserUsage:
    """What the parser process (:attr:`Parser.pid`) used, from the kernel when it was
    reaped."""

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


def spawn_parser() -> Parser:
    """Start the parser process, waiting for its job.

    On Linux it dies with the thread that called this (PR_SET_PDEATHSIG): call it from
    the main thread, or one that outlives the run."""
    job_read, job_write = os.pipe()
    try:
        items_read, items_write = os.pipe()
    except OSError:
        os.close(job_read)
        os.close(job_write)
        raise
    try:
        for fd in (job_read, items_write):  # inherited, unlike any other pipe of ours
            os.set_inheritable(fd, True)
        pid = os.posix_spawn(
            sys.executable,
            [
                sys.executable,
                *_interpreter_flags(),
                *("-m", "batchib.parseproc", str(os.getpid()), str(job_read), str(items_write)),
            ],
            # Python's own settings stay (a virtual environment, PYTHONPATH); the key
            # does not: the child never needs it.
            {k: v for k, v in os.environ.items() if not k.endswith("API_KEY")},
            # A pipe reading the command's stdout must not wait for the child.
            file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
            # Blocked for the child's whole life (Python does not unblock them), so that a
            # Ctrl-C (or a closed terminal's SIGHUP) to the process group, even while it
            # starts, never reaches it.
            setsigmask={signal.SIGINT, signal.SIGTERM, signal.SIGHUP},
        )
    except BaseException:
        for fd in (job_write, items_read):
            os.close(fd)
        raise
    finally:
        os.close(job_read)
        os.close(items_write)
    return Parser(pid, job_write, items_read)


def _interpreter_flags() -> list[str]:
    """The flags that decide where the child imports from, as the main process's.
    Always -P: `-m` would otherwise put the current directory first on sys.path, and a
    `batchib/` or `orjson.py` there would be imported instead of the installed ones."""
    flags = ["-P"]
    if sys.flags.isolated:
        flags.append("-I")
    else:
        flags += ["-E"] if sys.flags.ignore_environment else []
        flags += ["-s"] if sys.flags.no_user_site else []
    return flags


class Parser:
    """The main process's handle on the parser process."""

    def __init__(self, pid: int, job_fd: int, items_fd: int) -> None:
        self.pid = pid
        self._job_fd: int | None = job_fd
        self._items = os.fdopen(items_fd, "rb")
        self.usage: ParserUsage | None = None
        self._abandoned = False

    def start(
        self,
        paths: Iterable[str],
        defaults: RequestDefaults,
        shard: tuple[int, int] | None = None,
    ) -> ParsedElsewhere:
        """Send the child its job; the Source of what it parses."""
        job = (
            _PACKAGE,
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
        fd, self._job_fd = self._job_fd, None
        # Closed after: the child reads to the end. A dead child fails the write or the
        # close's flush; reading from it will say so.
        with contextlib.suppress(BrokenPipeError), open(fd, "wb") as stream:
            stream.write(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        return ParsedElsewhere(self._items, self.pid)

    def close(self) -> ParserUsage | None:
        """Stop the child (finished or not), reap it and note what it used. None if it
        has not died EXIT_WAIT_S after a SIGKILL (stuck in the kernel, on an input from a
        hung network mount, say): then it is left for init to reap, not waited for."""
        if self.usage is not None or self._abandoned:
            return self.usage
        if self._job_fd is not None:  # never started: it exits on its own
            os.close(self._job_fd)
            self._job_fd = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if not _exits_within(self.pid, EXIT_WAIT_S):
            self._abandoned = True  # its pipe too: a read of it may still be blocked
            return None
        _, _, rusage = os.wait4(self.pid, 0)
        # Dead, so a read still blocked in the reader thread has returned: the close
        # does not wait on it.
        self._items.close()
        self.usage = ParserUsage(rusage.ru_utime + rusage.ru_stime, rusage.ru_maxrss / 1024)
        return self.usage


def _exits_within(pid: int, timeout_s: float) -> bool:
    """Whether the child `pid` exits within `timeout_s` (without reaping it). Where
    Linux's pidfd is missing, True: the caller's wait4 then waits as long as it takes."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    return bool(ready)


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
        raise OSError(
            f"the input parser (process {self._pid}) ended unexpectedly "
            "(BATCHIB_PARSER=inline parses in the main process instead)"
        )

    def parse(self, block: Sequence[Any]) -> list[Request | InvalidLine]:
        from_fields = Request.from_fields
        return [
            from_fields(row) if type(row) is tuple else row
            for payload in block
            for row in pickle.loads(payload)
        ]


def _child(parent: int, job_fd: int, out: BinaryIO) -> None:
    """The parser process: its job from `job_fd`, frames to `out`. Raises what stops it."""
    _die_with(parent)
    from batchib.idstore import IdStore
    from batchib.source import PARSE_BATCH, InputFiles

    ids = IdStore()  # made while the main process is still busy, not after the job
    try:
        with open(job_fd, "rb") as stream:
            job = stream.read()
        if not job:  # the run ended before it needed us
            return
        package, paths, (model, system, max_tokens, temperature, params), shard = pickle.loads(job)
        if package != _PACKAGE:
            raise RuntimeError(
                f"it imported batchib from {_PACKAGE}, the main process from {package}"
            )
        defaults = RequestDefaults(model, system, max_tokens, temperature, params)
        source = InputFiles(paths, defaults, ids, shard)
        batch = FIRST_BATCH
        try:
            while block := source.read_block():
                start = 0
                while start < len(block):
                    items = source.parse(block[start : start + batch])
                    start += batch
                    batch = PARSE_BATCH
                    if items:
                        rows = [item.fields() if type(item) is Request else item for item in items]
                        _send(out, _ITEMS, pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            _send(out, _ERROR, str(exc).encode())  # unreadable input: as inline, an OSError
            return
        _send(out, _END, b"")
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


def _main(argv: list[str]) -> NoReturn:
    """``python -m batchib.parseproc PARENT_PID JOB_FD ITEMS_FD``, by spawn_parser. Any
    failure reaches the main process as an error frame, with its cause."""
    status = 0
    try:
        out = open(int(argv[2]), "wb")  # noqa: SIM115 - for the life of the process
        try:
            _child(int(argv[0]), int(argv[1]), out)
        except BrokenPipeError:  # the main process stopped reading: the run is over
            pass
        except Exception as exc:  # a bug, or a broken install: said in the run's error
            status = _CHILD_FAILED
            with contextlib.suppress(OSError):
                _send(out, _ERROR, f"the input parser failed: {type(exc).__name__}: {exc}".encode())
    finally:
        os._exit(status)


if __name__ == "__main__":
    _main(sys.argv[1:])
