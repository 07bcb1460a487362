"""The input parser process: the same items as parsing inline, errors carried across, and
no process left behind however the run ends."""

from __future__ import annotations

import json
import os
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
from batchib.inputs import Request, parse_line
from batchib.parseproc import usable_cpus, wanted
from tests.conftest import ENV_TO_CLEAR, CliRun, read_jsonl
from tests.test_cacerts import in_a_fresh_interpreter
from tests.test_signals import CountingGateway

LINUX = sys.platform.startswith("linux")
forks_here = pytest.mark.skipif(
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


# Run in a fresh interpreter: a fork is refused where threads already run (pytest's may).
PROBE = """
import json, os, signal, sys
from batchib.config import RequestDefaults
from batchib.idstore import IdStore
from batchib.parseproc import fork_parser
from batchib.source import InputFiles

case, paths, shard = sys.argv[1], sys.argv[2:-1], json.loads(sys.argv[-1])
shard = tuple(shard) if shard else None
defaults = RequestDefaults(model="m", max_tokens=9, params={"seed": 1})

def describe(item):
    return [type(item).__name__, item.custom_id, item.file, item.line,
            getattr(item, "code", None), getattr(item, "body_hash", None),
            getattr(item, "metadata", None), getattr(item, "rough_prompt_tokens", None)]

def drain(source):
    items, error = [], None
    try:
        while block := source.read_block():
            items.extend(source.parse(block))
    except OSError as exc:
        error = str(exc)
    return items, error

parser = fork_parser()
assert parser is not None
result = {"pid": parser.pid}
if case == "never_started":
    usage = parser.close()
else:
    source = parser.start(paths, defaults, shard)
    if case == "killed":
        os.kill(parser.pid, signal.SIGKILL)
    items, error = drain(source)
    usage = parser.close()
    ids = IdStore()
    inline, inline_error = drain(InputFiles(paths, defaults, ids, shard))
    result.update(
        items=[describe(i) for i in items], error=error,
        inline=[describe(i) for i in inline], inline_error=inline_error,
        equal=items == inline,
    )
try:
    os.waitpid(parser.pid, os.WNOHANG)
    result["reaped"] = False
except ChildProcessError:
    result["reaped"] = True
result["usage"] = [usage.pid, usage.cpu_s, usage.peak_rss_mb]
print(json.dumps(result))
"""


def probe(case: str, paths: list[Path | str], shard: tuple[int, int] | None = None) -> Any:
    return in_a_fresh_interpreter(PROBE, case, *map(str, paths), json.dumps(shard))


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


@forks_here
@pytest.mark.parametrize("shard", [None, (1, 2), (2, 2)])
def test_the_parser_process_sends_exactly_what_parsing_inline_makes(
    tmp_path: Path, shard: tuple[int, int] | None
) -> None:
    result = probe("all", mixed_inputs(tmp_path), shard)

    assert result["error"] is None and result["inline_error"] is None
    assert result["equal"], (result["items"][:3], result["inline"][:3])
    kinds = {item[0] for item in result["items"]}
    assert kinds == {"Request", "InvalidLine"}
    codes = {item[4] for item in result["items"]}
    if shard is None:
        assert len(result["items"]) == 1 + 700 + 5 + 2
        assert {"invalid_json", "duplicate_custom_id", "invalid_id"} <= codes
    assert result["reaped"]
    pid, cpu_s, peak_rss_mb = result["usage"]
    assert pid == result["pid"] and cpu_s > 0 and peak_rss_mb > 1


@forks_here
def test_an_input_the_parser_cannot_read_fails_as_it_does_inline_after_the_lines_before_it(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(10)))

    result = probe("all", [good, "/proc/self/mem"])  # a regular file that reads as EIO

    assert result["error"] == result["inline_error"]
    assert "Input/output error" in result["error"]
    assert result["items"] == result["inline"] and len(result["items"]) == 10
    assert result["reaped"]


@forks_here
def test_a_parser_process_that_dies_is_an_input_error_not_a_short_run(tmp_path: Path) -> None:
    result = probe("killed", mixed_inputs(tmp_path))

    assert result["error"] == f"the input parser (process {result['pid']}) ended unexpectedly"
    assert result["reaped"]


@forks_here
def test_a_parser_process_never_given_a_job_is_reaped() -> None:
    result = probe("never_started", [])

    assert result["reaped"]
    assert result["usage"][0] == result["pid"]


def test_no_fork_while_another_thread_runs() -> None:
    script = """
import json, threading
from batchib.parseproc import fork_parser
stop = threading.Event()
thread = threading.Thread(target=stop.wait)
thread.start()
parser = fork_parser()
stop.set()
print(json.dumps(parser is None))
"""
    assert in_a_fresh_interpreter(script) is True


def write_prompts(path: Path, count: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"p {i}"}) + "\n" for i in range(count))
    )
    return path


@forks_here
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
    tmp_path: Path, url: str, api_key: str, lines: int
) -> subprocess.Popen[bytes]:
    """`batchib run -` in its own process group, given `lines` prompts on a stdin that
    then stays open and silent: its parser process waits there, in a read."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
    env["BATCHIB_API_KEY"] = api_key
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


@forks_here
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


@forks_here
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
