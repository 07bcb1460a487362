"""`batchib --help` and `batchib run` must start fast: heavy modules load lazily."""

from __future__ import annotations

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
    assert listing.stdout.rstrip().splitlines()[-1].strip()  # the help's last line too

    usage = batchib("run", "--no-such-option")
    assert usage.returncode == 2
    assert "No such option '--no-such-option'" in usage.stderr


def test_a_long_report_on_a_pipe_arrives_whole(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"id": "r{i}", "prompt": "question {i}"}}\n' for i in range(3000)))
    completed = batchib("estimate", str(source), "--model", "gpt-5.4-mini", "--json")
    assert completed.returncode == 0, completed.stderr
    assert orjson.loads(completed.stdout)["total"]["requests"] == 3000
