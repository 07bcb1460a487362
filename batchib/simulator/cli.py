"""`batchib simulate`: the gateway simulator as a command."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click

from batchib.simulator.serve import serve
from batchib.simulator.settings import DEFAULT_MODELS, SimulatorSettings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port; 0 picks a free one and prints it.",
)
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the base URL to this file once listening.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Mean latency of a completion.",
)
@click.option(
    "--latency-spread",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Latency is uniform in mean*(1±spread).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="ALIAS=SERVED",
    help="Serve ALIAS as the model SERVED (repeatable; replaces the defaults).",
)
@click.option(
    "--require-key",
    envvar="BATCHIB_SIMULATOR_KEY",
    help="Accept only this bearer key (env BATCHIB_SIMULATOR_KEY) [default: any].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for latency and text.")
def simulate(
    host: str,
    port: int,
    port_file: Path | None,
    latency_ms: float,
    latency_spread: float,
    models: tuple[str, ...],
    require_key: str | None,
    seed: int,
) -> None:
    """Serve an OpenAI-compatible gateway simulator until interrupted."""
    model_map = dict(DEFAULT_MODELS)
    if models:
        model_map = {}
        for pair in models:
            alias, _, served = pair.partition("=")
            model_map[alias] = served or alias
    try:
        settings = SimulatorSettings(
            latency_ms=latency_ms,
            latency_spread=latency_spread,
            models=model_map,
            require_key=require_key,
            seed=seed,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    def ready(url: str) -> None:
        click.echo(f"batchib simulator listening on {url}")
        sys.stdout.flush()
        if port_file is not None:
            temp = port_file.with_name(port_file.name + ".tmp")
            temp.write_text(url + "\n", encoding="utf-8")
            temp.replace(port_file)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signal(serve(settings, host, port, ready)))


async def _serve_until_signal(server: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(server)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
