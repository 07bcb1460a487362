"""The `batchib` command's entry point, which runs before the CLI's modules are imported.

For `batchib run` it first starts the input parser process (:mod:`batchib.parseproc`),
early, so that the child starts Python and imports the parsing code while this process
imports aiohttp.

`batchib run` needs aiohttp, whose import loads the system's CA certificates twice
(:mod:`batchib.cacerts`: about 50 ms, done by a thread instead). Started here, the thread
loads them while the rest of aiohttp, click and the CLI's modules are imported and the job
is set up, and the context batchib connects with is ready by the first connection (1 ms
left to wait in a 1-line run, medians of 15). Started from the run command, after those
imports, 31 ms of the 50 were still left to wait for.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from batchib.parseproc import Parser

# `batchib run` with any of these sends no request: it needs neither aiohttp nor the
# parser process. (Given as the value of another option instead, one costs that run only
# time: it parses on the loop and loads the certificates without the thread.)
NO_REQUESTS = {"-h", "--help", "--dry-run", "--print-config"}


def main() -> NoReturn:
    parser: Parser | None = None
    try:
        if sys.argv[1:2] == ["run"] and not NO_REQUESTS.intersection(sys.argv[2:]):
            from batchib import parseproc

            # The one environment read outside the CLI: the process starts before it.
            if parseproc.wanted(os.environ.get("BATCHIB_PARSER"), parseproc.usable_cpus()):
                try:
                    parser = parseproc.spawn_parser()
                except OSError:  # no process to be had: parse on the loop, as with one CPU
                    parser = None
            from batchib.cacerts import import_aiohttp

            import_aiohttp()
        from batchib.cli import console_main
    except KeyboardInterrupt:
        # Ctrl-C while starting: nothing is open yet. (The parser process, if any, ends
        # when its pipe closes with this process.) As the CLI says it, not a traceback.
        from batchib.control import EXIT_INTERRUPTED

        print("batchib: error: interrupted", file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)

    console_main(parser)
