"""`batchib --help` and `batchib run` must start fast: heavy modules load lazily."""

from __future__ import annotations

import subprocess
import sys

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
