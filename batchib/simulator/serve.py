"""Run the simulator on a TCP port until cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from yarl import URL

from batchib.simulator.app import create_app
from batchib.simulator.settings import SimulatorSettings

# In-flight requests get this long to finish once the server is cancelled; a simulator
# should not hold up the end of a test run for aiohttp's default minute.
SHUTDOWN_TIMEOUT_S = 2.0


async def serve(
    settings: SimulatorSettings,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator on ``host:port`` until the task is cancelled.

    Once listening, calls ``ready`` with the base URL, ``http://HOST:PORT/v1``, where PORT
    is the port actually bound (useful with ``port=0``, which picks a free one).
    """
    runner = web.AppRunner(
        create_app(settings), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port: int = runner.addresses[0][1]
        if ready is not None:
            ready(str(URL.build(scheme="http", host=host, port=bound_port, path="/v1")))
        # Nothing to do but wait for cancellation; it flows out through `finally`.
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
