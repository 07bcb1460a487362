"""What the benchmarks share: start a server that announces its URL in a file, run a
command and read its own rusage, write shorthand JSONL inputs.

Imported as `harness` by the scripts in bench/ (run as `python bench/NAME.py`, which puts
bench/ first on sys.path).
"""

from __future__ import annotations

import compileall
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BATCHIB = [sys.executable, "-m", "batchib"]


def compile_package() -> None:
    """Write batchib's bytecode, as `pip install` does. The bench runs the editable
    install, and where PYTHONDONTWRITEBYTECODE is set (this machine's environment sets
    it) every run would otherwise compile all 30-odd modules again: 40 ms of start-up
    that an installed copy never pays."""
    compileall.compile_dir(ROOT / "batchib", quiet=1)


# Where a child's output goes: inherited, discarded, or an open file.
Sink = int | IO[bytes] | None


def start_with_port_file(
    command: Sequence[str],
    port_file: Path,
    *,
    what: str = "the simulator",
    stdout: Sink = None,
    stderr: Sink = None,
    timeout_s: float = 20.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `command`, which writes its URL to `port_file` once listening; wait for it.

    Returns the process and the URL. Exits (SystemExit naming `what`) if the child dies
    first or the file is not written within `timeout_s`; the child is killed then.
    """
    process = subprocess.Popen(list(command), stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + timeout_s
    while True:  # a benchmark waiting for its child, not product code
        if port_file.exists():
            url = port_file.read_text().strip()
            if url:
                return process, url
        if time.monotonic() > deadline or process.poll() is not None:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise SystemExit(f"{what} did not start (exit {process.returncode})")
        time.sleep(0.05)


def start_logging_simulator(
    workdir: Path, name: str, args: Sequence[str], *, stderr: Sink = None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`batchib simulate` on a free port with a request log: (process, URL, log path)."""
    log = workdir / f"{name}.server.jsonl"
    url_file = workdir / f"{name}.url"
    process, url = start_with_port_file(
        [
            *(*BATCHIB, "simulate", "--port", "0"),
            *("--port-file", str(url_file), "--log", str(log)),
            *args,
        ],
        url_file,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    return process, url, log


@dataclass
class Measured:
    """One finished child: its wall time (around Popen and wait4), own rusage, output."""

    wall_s: float
    usage: resource.struct_rusage
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def cpu_s(self) -> float:
        return self.usage.ru_utime + self.usage.ru_stime

    @property
    def peak_rss_mb(self) -> float:
        return self.usage.ru_maxrss / 1024  # kilobytes on Linux

    def stderr_tail(self, chars: int = 2000) -> str:
        return self.stderr.decode(errors="replace")[-chars:]


def run_measured(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float | None = None,
) -> Measured:
    """Run `command` to completion; wall time, its own rusage (os.wait4), exit code, output.

    stdout and stderr go to temporary files, not pipes, so the child never blocks on a
    full pipe and no reader thread runs in this process while it is being measured. After
    `timeout_s` the child is killed (SIGKILL) and `timed_out` is set.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        finished = threading.Event()
        expired = threading.Event()

        def expire() -> None:
            if not finished.is_set():  # not yet reaped: the pid is still this child's
                expired.set()
                os.kill(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, expire) if timeout_s is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        finished.set()
        wall = time.perf_counter() - started
        if timer is not None:
            timer.cancel()
        exit_code = os.waitstatus_to_exitcode(status)
        process.returncode = exit_code  # reaped here: Popen must not wait for it again
        out.seek(0)
        err.seek(0)
        return Measured(wall, usage, exit_code, out.read(), err.read(), expired.is_set())


def _default_prompt(i: int) -> str:
    return f"Question number {i}: why is the sky blue?"


def write_shorthand(
    path: Path,
    count: int,
    *,
    prompt: Callable[[int], str] = _default_prompt,
    max_tokens: int = 16,
) -> None:
    """Shorthand JSONL: {"id": "r{i}", "prompt": prompt(i), "max_tokens": max_tokens}.

    The bytes are exactly json.dumps of that dict, one per line, only faster (a million
    lines in about a second).
    """
    encode = json.JSONEncoder().encode
    chunk = 10_000
    with open(path, "w") as stream:
        for start in range(0, count, chunk):
            stream.write(
                "".join(
                    f'{{"id": {encode(f"r{i}")}, "prompt": {encode(prompt(i))}, '
                    f'"max_tokens": {max_tokens}}}\n'
                    for i in range(start, min(start + chunk, count))
                )
            )
