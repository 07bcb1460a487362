"""The `batchib` command's entry point, which runs before the CLI's modules are imported.

`batchib run` needs aiohttp, whose import loads the system's CA certificates twice
(:mod:`batchib.cacerts`: about 50 ms, done by a thread instead). Started here, the thread
loads them while click and the CLI's modules are imported and the job is set up, and is
done by the first connection. Started from the run command, after those imports, 31 ms
of the 50 were still left to wait for.
"""

from __future__ import annotations

import sys
from typing import NoReturn

HELP = {"-h", "--help"}  # `batchib run --help` needs no aiohttp


def main() -> NoReturn:
    if sys.argv[1:2] == ["run"] and not HELP.intersection(sys.argv[2:]):
        from batchib.cacerts import import_aiohttp

        import_aiohttp()
    from batchib.cli import console_main

    console_main()
