"""The input parser process: the same items as parsing inline, errors carried across, no
key in its environment, and no process left behind however the run ends."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchib.config import RequestDefaults
from batchib.idstore import IdStore
from batchib.inputs import InvalidLine, Request, parse_line
from batchib.parseproc import (
    FIRST_BATCH,
    ParsedElsewhere,
    Parser,
    _exits_within,
    spawn_parser,
    usable_cpus,
    wanted,
)
from batchib.simulator import SimulatorSettings
from batchib.simulator.settings import FaultRates
from batchib.source import PARSE_BATCH, InputFiles, Source
from tests.conftest import ENV_TO_CLEAR, CliRun, read_jsonl
from tests.test_signals import CountingGateway

LINUX = sys.platform.startswith("linux")
parser_process_here = pytest.mark.skipif(
    not wanted(None, usable_cpus()), reason="the parser process runs on Linux with 2+ CPUs"
)


@pytest.mark.parametrize(
    ("setting", "cpus", "platform", "expected"),
    [
        (None, 2, "linux", True),
        ("process", 8, "linux", True),
        ("inline", 8, "linux", False),
        (None, 1, "linux", False),
        (None, 8, "darwin", False),
        (None, 8, "win32", False),
    ],
)
def test_the_parser_process_is_used_with_a_core_to_spare_on_linux_unless_told_inline(
    setting: str | None, cpus: int, platform: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    assert wanted(setting, cpus) is expected


def test_a_request_rebuilt_from_its_fields_is_equal_and_decodes_its_body_only_when_asked() -> None:
    line = b'{"id": "a", "prompt": "hi", "max_tokens": 7, "metadata": {"k": [1, 2]}}'
    original = parse_line(line, "in.jsonl", 3, RequestDefaults(model="m", temperature=0.5))
    assert isinstance(original, Request)

    rebuilt = Request.from_fields(original.fields())

    assert rebuilt._body is None
    assert (rebuilt.custom_id, rebuilt.model, rebuilt.completion_cap) == ("a", "m", 7)
    assert rebuilt.rough_prompt_tokens == original.rough_prompt_tokens
    assert rebuilt == original  # decodes the body to compare it
    assert rebuilt.body == original.body == json.loads(original.body_bytes)
    assert rebuilt != Request.from_fields(("b", *original.fields()[1:]))


def describe(item: Request | InvalidLine) -> list[Any]:
    return [
        type(item).__name__,
        item.custom_id,
        item.file,
        item.line,
        getattr(item, "code", None),
        getattr(item, "body_hash", None),
        getattr(item, "metadata", None),
        getattr(item, "rough_prompt_tokens", None),
    ]


def drain(source: Source) -> tuple[list[Request | InvalidLine], str | None]:
    items: list[Request | InvalidLine] = []
    try:
        while block := source.read_block():
            items.extend(source.parse(block))
    except OSError as exc:
        return items, str(exc)
    return items, None


DEFAULTS = RequestDefaults(model="m", max_tokens=9, params={"seed": 1})


def both_ways(
    paths: list[Path | str], shard: tuple[int, int] | None = None
) -> tuple[tuple[list[Any], str | None], tuple[list[Any], str | None], Parser]:
    """(items, error) from the parser process and from parsing inline; the parser, closed."""
    names = [str(path) for path in paths]
    parser = spawn_parser()
    items, error = drain(parser.start(names, DEFAULTS, shard))
    assert parser.close() is not None
    ids = IdStore()
    try:
        inline, inline_error = drain(InputFiles(names, DEFAULTS, ids, shard))
    finally:
        ids.close()
    assert items == inline  # Request equality compares the decoded bodies too
    return (
        ([describe(item) for item in items], error),
        ([describe(item) for item in inline], inline_error),
        parser,
    )


def reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def mixed_inputs(tmp_path: Path) -> list[Path | str]:
    first = tmp_path / "first.jsonl"
    lines = [b"\xef\xbb\xbf" + json.dumps({"id": "bom", "prompt": "p"}).encode(), b"", b"  "]
    lines += [json.dumps({"id": f"r{i}", "prompt": f"question {i}"}).encode() for i in range(700)]
    lines += [
        b"not json",
        json.dumps({"id": "r5", "prompt": "a repeated id"}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "x"}], "metadata": [1]}).encode(),
        json.dumps({"prompt": "long " * 100_000}).encode(),  # longer than a read block
        json.dumps({"id": 1.5, "prompt": "a bad id"}).encode(),
    ]
    first.write_bytes(b"\n".join(lines) + b"\n")
    second = tmp_path / "second.jsonl"
    batch_line = {
        "custom_id": "b1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "y"}], "max_tokens": 3},
    }
    second.write_text(json.dumps(batch_line) + "\n" + '{"id": "r0", "prompt": "again"}')
    return [first, second]


@parser_process_here
@pytest.mark.parametrize("shard", [None, (1, 2), (2, 2)])
def test_the_parser_process_sends_exactly_what_parsing_inline_makes(
    tmp_path: Path, shard: tuple[int, int] | None
) -> None:
    (items, error), (inline, inline_error), parser = both_ways(mixed_inputs(tmp_path), shard)

    assert error is None and inline_error is None
    assert items == inline
    assert {item[0] for item in items} == {"Request", "InvalidLine"}
    if shard is None:
        assert len(items) == 1 + 700 + 5 + 2
        assert {"invalid_json", "duplicate_custom_id", "invalid_id"} <= {i[4] for i in items}
    assert reaped(parser.pid)
    assert parser.usage is not None
    assert parser.usage.cpu_s > 0 and parser.usage.peak_rss_mb > 1


@parser_process_here
def test_the_first_slice_is_short_so_the_first_request_need_not_wait_for_a_full_one(
    tmp_path: Path,
) -> None:
    source = write_prompts(tmp_path / "in.jsonl", 600)
    parser = spawn_parser()
    try:
        elsewhere = parser.start([str(source)], DEFAULTS)
        sizes = []
        while block := elsewhere.read_block():
            sizes.append(len(elsewhere.parse(block)))
    finally:
        parser.close()

    assert sizes[0] == FIRST_BATCH < PARSE_BATCH
    assert sizes[1] == PARSE_BATCH
    assert sum(sizes) == 600


@parser_process_here
def test_an_input_the_parser_cannot_read_fails_as_it_does_inline_after_the_lines_before_it(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(10)))

    # /proc/self/mem: a regular file that reads as EIO.
    (items, error), (inline, inline_error), _ = both_ways([good, "/proc/self/mem"])

    assert error == inline_error
    assert error is not None and "Input/output error" in error
    assert items == inline and len(items) == 10


@parser_process_here
def test_a_parser_process_that_dies_is_an_input_error_not_a_short_run(tmp_path: Path) -> None:
    parser = spawn_parser()
    source = parser.start([str(path) for path in mixed_inputs(tmp_path)], DEFAULTS)
    os.kill(parser.pid, signal.SIGKILL)

    _, error = drain(source)

    assert error is not None
    assert error.startswith(f"the input parser (process {parser.pid}) ended unexpectedly")
    assert parser.close() is not None and reaped(parser.pid)


@parser_process_here
def test_a_parser_process_dead_before_its_job_fails_the_reading_not_the_start() -> None:
    parser = spawn_parser()
    os.kill(parser.pid, signal.SIGKILL)
    os.waitid(os.P_PID, parser.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped

    source = parser.start(["in.jsonl"], DEFAULTS)  # a small job: fails only at the close
    _, error = drain(source)

    assert error is not None and "ended unexpectedly" in error
    assert parser.close() is not None and reaped(parser.pid)


@parser_process_here
def test_a_failure_inside_the_parser_process_reaches_the_run_with_its_cause() -> None:
    parser = spawn_parser()
    # A job naming another copy of batchib: the child refuses it.
    job = ("/elsewhere/batchib", ["in.jsonl"], (None, None, None, None, {}), None)
    with open(parser._job_fd or -1, "wb") as stream:
        stream.write(pickle.dumps(job))
    parser._job_fd = None

    _, error = drain(ParsedElsewhere(parser._items, parser.pid))

    assert error is not None
    assert error.startswith("the input parser failed: RuntimeError: it imported batchib from")
    assert error.endswith("the main process from /elsewhere/batchib")
    parser.close()


@parser_process_here
def test_the_parser_process_imports_batchib_as_installed_not_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_prompts(tmp_path / "in.jsonl", 5)
    shadow = tmp_path / "batchib"
    shadow.mkdir()
    (shadow / "__init__.py").write_text(
        'raise RuntimeError("a batchib/ in the current directory")\n'
    )
    monkeypatch.chdir(tmp_path)

    parser = spawn_parser()
    items, error = drain(parser.start([str(source)], DEFAULTS))
    parser.close()

    assert error is None and len(items) == 5


def test_waiting_for_a_child_to_exit_gives_up_at_the_timeout_without_reaping_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not _exits_within(child.pid, 0.05)
        child.kill()
        assert _exits_within(child.pid, 10)
        assert child.poll() is not None  # still there to reap
    finally:
        child.kill()
        child.wait()


@parser_process_here
def test_a_parser_process_never_given_a_job_is_reaped() -> None:
    parser = spawn_parser()

    usage = parser.close()

    assert usage is not None and reaped(parser.pid)


@parser_process_here
def test_the_parser_process_has_no_key_no_stdout_and_survives_a_ctrl_c_while_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHIB_API_KEY", "sk-parser-must-not-see-this")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-nor-this")
    parser = spawn_parser()
    # At once, while it is still starting Python: it must not die of it.
    os.kill(parser.pid, signal.SIGINT)
    environ = Path(f"/proc/{parser.pid}/environ").read_bytes()
    stdout = os.readlink(f"/proc/{parser.pid}/fd/1")

    items, error = drain(parser.start([str(mixed_inputs(tmp_path)[0])], DEFAULTS))
    parser.close()

    assert b"API_KEY" not in environ and b"sk-" not in environ
    assert stdout == os.devnull
    assert error is None and len(items) == 1 + 700 + 5


def write_prompts(path: Path, count: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"p {i}"}) + "\n" for i in range(count))
    )
    return path


@parser_process_here
def test_batchib_run_parses_in_a_process_unless_told_inline_with_the_same_records(
    tmp_path: Path,
    run_batchib: Callable[..., CliRun],
    start_simulator: Callable[..., str],
) -> None:
    url = start_simulator()
    source = write_prompts(tmp_path / "in.jsonl", 300)
    with source.open("a") as stream:
        stream.write('{"id": "q7", "prompt": "a repeat"}\nnot json\n')
    outcomes = {}
    for setting in ("process", "inline"):
        out = tmp_path / f"{setting}.jsonl"
        run = run_batchib(
            source, "-o", out, "--model", "gpt-5.4", "--base-url", url, "-q",
            env={"BATCHIB_PARSER": setting},
        )  # fmt: skip
        assert run.status == 3, run.stderr  # the two bad lines
        summary = json.loads(Path(f"{out}.summary.json").read_text())
        outcomes[setting] = (
            summary["input_parser"]["where"],
            sorted((r["custom_id"], r["batchib"]["status"]) for r in read_jsonl(out)),
            summary["counts"],
        )

    assert outcomes["process"][0] == "process" and outcomes["inline"][0] == "event loop"
    assert outcomes["process"][1:] == outcomes["inline"][1:]
    assert len(outcomes["process"][1]) == 302


def start_on_a_silent_stdin(
    tmp_path: Path, url: str, api_key: str, lines: int, parser: str = "process"
) -> subprocess.Popen[bytes]:
    """`batchib run -` in its own process group, given `lines` prompts on a stdin that
    then stays open and silent: its parser process waits there, in a read."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
    env["BATCHIB_API_KEY"] = api_key
    env["BATCHIB_PARSER"] = parser
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "batchib", "run", "-", "-o", "out.jsonl"),
            *("--model", "gpt-5.4", "--base-url", url, "-c", "4", "--grace", "1"),
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's job is
    )
    assert process.stdin is not None
    for i in range(lines):
        process.stdin.write(json.dumps({"id": f"q{i}", "prompt": f"p {i}"}).encode() + b"\n")
    process.stdin.flush()
    return process


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie left for init to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def waiting_for_more_input(
    tmp_path: Path, start_app: Callable[[web.Application], str], api_key: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A run with its 3 lines in flight, waiting for more on a silent stdin; its parser's
    pid. (Fewer lines than half the queue holds: the run does ask for more.)"""
    gateway = CountingGateway(latency_ms=100, wake_at=3)
    url = start_app(gateway.app)
    process = start_on_a_silent_stdin(tmp_path, url, api_key, 3)
    assert gateway.reached.wait(timeout=30)
    [parser] = children(process.pid)
    assert not gone(parser)
    return process, parser


@parser_process_here
def test_ctrl_c_reaching_the_parser_process_too_stops_the_run_as_an_interrupt(
    tmp_path: Path, start_app: Callable[[web.Application], str], api_key: str
) -> None:
    process, parser = waiting_for_more_input(tmp_path, start_app, api_key)

    # As Ctrl-C does: to every process of the group. Were the parser to die of it, the
    # run, waiting on it for more input, would end as an input error instead.
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 130, stderr.decode()
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["counts"]["succeeded"] == 3  # those in flight finished
    assert summary["input_parser"]["pid"] == parser
    assert gone(parser)


@parser_process_here
def test_kill_9_of_batchib_takes_the_parser_process_with_it(
    tmp_path: Path, start_app: Callable[[web.Application], str], api_key: str
) -> None:
    process, parser = waiting_for_more_input(tmp_path, start_app, api_key)

    process.kill()  # the parser, blocked reading stdin, writes nothing to notice it by
    process.wait(timeout=30)  # stdin stays open: the parser gets no end of input either

    deadline = time.monotonic() + 10
    while not gone(parser) and time.monotonic() < deadline:
        time.sleep(0.02)  # the kernel's kill is asynchronous; nothing to wait on here
    assert gone(parser)
    process.communicate(timeout=30)


@pytest.mark.parametrize("parser", ["process", "inline"])
def test_a_fatal_answer_ends_a_run_waiting_on_a_silent_stdin(
    parser: str,
    tmp_path: Path,
    start_simulator: Callable[..., str],
    api_key: str,
) -> None:
    # The key stops working after 2 requests: a stop that lets requests in flight
    # finish, and would otherwise wait for the input to say more.
    url = start_simulator(SimulatorSettings(faults=FaultRates(revoke_after=2)))
    process = start_on_a_silent_stdin(tmp_path, url, api_key, 5, parser)

    try:
        process.wait(timeout=30)  # stdin still open (communicate() would close it)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1, stderr.decode()
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["stop"]["code"] == "invalid_api_key"
    assert summary["counts"]["lines"] == 5
    assert summary["counts"]["input_complete"] is False


@parser_process_here
def test_batchib_run_parses_inline_when_no_process_can_be_started(
    tmp_path: Path, start_simulator: Callable[..., str], api_key: str
) -> None:
    url = start_simulator()
    source = write_prompts(tmp_path / "in.jsonl", 20)
    # The real entry point, with posix_spawn failing as it does when no process is left.
    script = (
        "import os, sys\n"
        "def no_process(*args, **kwargs):\n"
        "    raise BlockingIOError(11, 'Resource temporarily unavailable')\n"
        "os.posix_spawn = no_process\n"
        "from batchib.launch import main\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
    env["BATCHIB_API_KEY"] = api_key
    completed = subprocess.run(
        [
            *(sys.executable, "-c", script, "run", str(source), "-o", "out.jsonl"),
            *("--model", "gpt-5.4", "--base-url", url, "-q"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr.decode()
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["input_parser"] == {"where": "event loop"}
    assert summary["counts"]["succeeded"] == 20
