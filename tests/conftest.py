"""Shared fixtures for the end-to-end tests.

- ``start_simulator`` / ``start_recording_simulator``: the built-in gateway simulator on
  loopback, in a thread with its own event loop; the recording one also keeps every
  request it received (headers and body) and the peak number of requests in flight.
- ``start_app``: any aiohttp application served the same way (a gateway that misbehaves).
- ``run_batchib``: ``python -m batchib run ...`` as a subprocess, with a clean environment.
- ``validate``: JSON Schema validation against ``tests/data/chat_schemas.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from jsonschema import Draft202012Validator
from yarl import URL

from batchib.simulator import SimulatorSettings, create_app, serve

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SCHEMAS_PATH = Path(__file__).resolve().parent / "data" / "chat_schemas.json"
# Everything the CLI reads from the environment that a developer's shell may have set.
ENV_TO_CLEAR = (
    "BATCHIB_API_KEY",
    "INFINITYBLUE_API_KEY",
    "OPENAI_API_KEY",
    "BATCHIB_BASE_URL",
    "BATCHIB_SIMULATOR_KEY",
    "BATCHIB_PARSER",  # the tests choose where the input is parsed
)
CLI_TIMEOUT_S = 60
SERVER_START_TIMEOUT_S = 10
SERVER_STOP_TIMEOUT_S = 10

Ready = Callable[[str], None]


# --- the simulator in a thread ----------------------------------------------------------


class _ServerThread:
    """Runs one server coroutine on its own event loop in a daemon thread."""

    def __init__(self, serve_until_cancelled: Callable[[Ready], Awaitable[None]]) -> None:
        self._serve = serve_until_cancelled
        self._ready = threading.Event()
        self._url: str | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, name="simulator", daemon=True)

    def start(self) -> str:
        """Start serving; the base URL once the server listens."""
        self._thread.start()
        if not self._ready.wait(SERVER_START_TIMEOUT_S):
            raise RuntimeError("the simulator did not start in time")
        if self._url is None:
            raise RuntimeError("the simulator failed to start") from self._error
        return self._url

    def stop(self) -> None:
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            # The loop may close between the check and the call once the task ended.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(SERVER_STOP_TIMEOUT_S)
        assert not self._thread.is_alive(), "the simulator did not stop"
        if self._error is not None:
            raise RuntimeError("the simulator failed") from self._error

    def _on_ready(self, url: str) -> None:
        self._url = url
        self._ready.set()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._serve(self._on_ready))
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            # Handlers still sleeping (a hung reply) end here, not in "Task was destroyed".
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.wait(leftover))
            loop.close()


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., str]]:
    """Start ``batchib.simulator.serve`` on 127.0.0.1; the factory returns its base URL."""
    threads: list[_ServerThread] = []

    def start(settings: SimulatorSettings | None = None) -> str:
        thread = _ServerThread(
            lambda ready: serve(settings or SimulatorSettings(), "127.0.0.1", 0, ready=ready)
        )
        threads.append(thread)
        return thread.start()

    yield start
    for thread in threads:
        thread.stop()


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the simulator received it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RecordingGateway:
    """A running simulator and what it has received (complete once the client exits)."""

    url: str = ""
    requests: list[ReceivedRequest] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    def bodies(self) -> list[Any]:
        return [request.json() for request in self.requests]

    def clear(self) -> None:
        self.requests.clear()
        self.peak_in_flight = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Runs on the server's loop only: no lock needed.
        body = await request.read()
        self.requests.append(
            ReceivedRequest(
                request.method,
                request.path,
                {name.lower(): value for name, value in request.headers.items()},
                body,
            )
        )
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1


async def _serve_app(app: web.Application, ready: Ready) -> None:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port: int = runner.addresses[0][1]
        ready(str(URL.build(scheme="http", host="127.0.0.1", port=port, path="/v1")))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


@pytest.fixture
def start_app() -> Iterator[Callable[[web.Application], str]]:
    """Serve any aiohttp application on 127.0.0.1; the factory returns its base URL
    (``http://127.0.0.1:PORT/v1``)."""
    threads: list[_ServerThread] = []

    def start(app: web.Application) -> str:
        thread = _ServerThread(lambda ready: _serve_app(app, ready))
        threads.append(thread)
        return thread.start()

    yield start
    for thread in threads:
        thread.stop()


@pytest.fixture
def start_recording_simulator(
    start_app: Callable[[web.Application], str],
) -> Callable[..., RecordingGateway]:
    """Start the simulator app with a recording middleware in front of everything, so
    requests the simulator rejects (401, 404) are recorded too."""

    def start(settings: SimulatorSettings | None = None) -> RecordingGateway:
        gateway = RecordingGateway()
        app = create_app(settings or SimulatorSettings())
        app.middlewares.insert(0, gateway.middleware)
        gateway.url = start_app(app)
        return gateway

    return start


@pytest.fixture
def closed_port_url() -> str:
    """A loopback base URL on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --- the CLI ----------------------------------------------------------------------------


@pytest.fixture
def sample(tmp_path: Path) -> Callable[[str], Path]:
    """``sample(NAME)`` copies samples/NAME into tmp_path (tests may edit the copy)."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copyfile(SAMPLES / name, target)
        return target

    return copy


@pytest.fixture
def api_key() -> str:
    """A distinctive key per test, easy to search for in files and output."""
    return f"sk-test-{secrets.token_hex(16)}"


@dataclass(frozen=True)
class CliRun:
    """A finished ``batchib run``: exit status, output streams and the files it wrote."""

    status: int
    stdout: str
    stderr: str
    output: Path | None

    def records(self) -> list[dict[str, Any]]:
        """Every line of the results file, parsed."""
        assert self.output is not None
        return read_jsonl(self.output)

    def summary(self) -> dict[str, Any]:
        assert self.output is not None
        summary: dict[str, Any] = json.loads(
            self.output.with_name(self.output.name + ".summary.json").read_text()
        )
        return summary


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _output_arg(args: tuple[str, ...], cwd: Path) -> Path | None:
    for flag, value in itertools.pairwise(args):
        if flag in ("-o", "--output"):
            return cwd / value
    return None


@pytest.fixture
def run_batchib(tmp_path: Path, api_key: str) -> Callable[..., CliRun]:
    """Run ``python -m batchib run ARGS`` in tmp_path with only the environment given.

    ``key`` goes into BATCHIB_API_KEY (None leaves every key variable unset); ``env`` adds
    variables; ``stdin`` is fed to the process.
    """

    def run(
        *args: str | Path,
        key: str | None = api_key,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CliRun:
        environ = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
        if key is not None:
            environ["BATCHIB_API_KEY"] = key
        environ.update(env or {})
        argv = tuple(str(arg) for arg in args)
        completed = subprocess.run(
            [sys.executable, "-m", "batchib", "run", *argv],
            cwd=tmp_path,
            env=environ,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        return CliRun(
            completed.returncode,
            completed.stdout.decode(),
            completed.stderr.decode(),
            _output_arg(argv, tmp_path),
        )

    return run


# --- schemas ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def schema_validators() -> dict[str, Draft202012Validator]:
    schemas = json.loads(SCHEMAS_PATH.read_text())
    return {
        name: Draft202012Validator(schema) for name, schema in schemas.items() if name != "_meta"
    }


@pytest.fixture
def validate(schema_validators: dict[str, Draft202012Validator]) -> Callable[[str, Any], None]:
    """``validate(NAME, instance)`` fails the test with every schema error listed."""

    def check(name: str, instance: Any) -> None:
        errors = [
            f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in schema_validators[name].iter_errors(instance)
        ]
        assert not errors, f"{name} errors:\n" + "\n".join(errors)

    return check
