"""`batchib --help` and `batchib run` must start fast: heavy modules load lazily."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

PROBE = """
import sys
from batchib.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print(sorted(m for m in ("aiohttp.web", "bpe_openai", "batchib.simulator.app") if m in sys.modules))
"""


def test_help_lists_every_command_without_importing_the_heavy_modules() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )

    for command in ("compact", "estimate", "report", "run", "simulate"):
        assert f"  {command} " in completed.stdout
    assert completed.stdout.strip().endswith("[]")


def batchib(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchib", *args], capture_output=True, text=True, timeout=60
    )


def test_the_command_exits_without_teardown_yet_with_all_its_output_and_status() -> None:
    # console_main ends with os._exit: what is buffered must still come out, and the
    # status must be click's (0, or 2 for a usage error) or the command's.
    version = batchib("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("batchib, version ")

    listing = batchib("estimate", "--help")
    assert listing.returncode == 0
    assert listing.stdout.rstrip().endswith("Show this message and exit.")  # its last line

    usage = batchib("run", "--no-such-option")
    assert usage.returncode == 2
    assert "No such option '--no-such-option'" in usage.stderr


def test_output_longer_than_a_pipe_holds_arrives_whole() -> None:
    # console_main ends with os._exit, which flushes nothing itself: 1 MB on stdout, a
    # line at a time (far more than a pipe holds, its tail still in Python's buffer at
    # the end), must arrive whole.
    probe = (
        "import sys\n"
        "from batchib import cli\n"
        "def fake_main(**_):\n"
        "    for _ in range(1000):\n"
        "        sys.stdout.write('x' * 999 + '\\n')\n"
        "    raise SystemExit(3)\n"
        "cli.main = fake_main\n"
        "cli.console_main()\n"
    )
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=buffered
    )
    assert completed.returncode == 3
    assert len(completed.stdout) == 1000 * 1000  # not a whole number of 8 KiB buffers


def test_a_report_through_the_real_command_arrives_whole(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"id": "r{i}", "prompt": "question {i}"}}\n' for i in range(3000)))
    completed = batchib("estimate", str(source), "--model", "gpt-5.4-mini", "--json")
    assert completed.returncode == 0, completed.stderr
    assert orjson.loads(completed.stdout)["total"]["requests"] == 3000


LIMITS_PROBE = """
import sys
import batchib.cli, batchib.job, batchib.runner
from batchib.limits import Limits
Limits(None, None)
print("aiolimiter" in sys.modules)
Limits(600, None)
print("aiolimiter" in sys.modules)
"""


def test_aiolimiter_is_imported_only_once_a_rate_is_known() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", LIMITS_PROBE], capture_output=True, text=True, check=True
    )
    assert completed.stdout.split() == ["False", "True"]
