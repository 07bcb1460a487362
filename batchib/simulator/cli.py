"""`batchib simulate`: the gateway simulator as a command."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from batchib.simulator.serve import serve
from batchib.simulator.settings import DEFAULT_MODELS, FaultRates, SimulatorSettings

_FC = TypeVar("_FC", bound=Callable[..., Any])


def _fault_rate(flag: str, outcome: str) -> Callable[[_FC], _FC]:
    return click.option(
        flag,
        type=click.FloatRange(0, 1),
        default=0.0,
        metavar="RATE",
        help=f"Share of attempts {outcome}.",
    )


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
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for latency, faults and text."
)
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute allowed per key.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute allowed per key.")
@click.option(
    "--burst-s",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds of the per-minute limits a key may use at once.",
)
@click.option(
    "--no-rate-headers",
    is_flag=True,
    help="Do not send x-ratelimit-* headers (clients must infer the limits).",
)
@_fault_rate("--fail-500", "answered 500")
@_fault_rate("--fail-502", "answered 502")
@_fault_rate("--fail-503", "answered 503 (overloaded)")
@_fault_rate("--drop", "whose connection is closed unanswered")
@_fault_rate("--hang", "answered only after --hang-s")
@click.option(
    "--hang-s",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="How long a hung request waits.",
)
@_fault_rate("--truncate", "answered 200 with a cut-off body")
@_fault_rate("--quota", "answered 429 insufficient_quota")
@click.option(
    "--revoke-after",
    type=click.IntRange(min=0),
    metavar="N",
    help="Revoke the first key seen after its first N requests (401); other keys stay valid.",
)
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append one JSON line per completions request received to this file.",
)
def simulate(
    host: str,
    port: int,
    port_file: Path | None,
    latency_ms: float,
    latency_spread: float,
    models: tuple[str, ...],
    require_key: str | None,
    seed: int,
    rpm: int | None,
    tpm: int | None,
    burst_s: float,
    no_rate_headers: bool,
    fail_500: float,
    fail_502: float,
    fail_503: float,
    drop: float,
    hang: float,
    hang_s: float,
    truncate: float,
    quota: float,
    revoke_after: int | None,
    log_path: Path | None,
) -> None:
    """Serve an OpenAI-compatible gateway simulator until interrupted.

    Fault rates are probabilities per attempt (adding up to at most 1); a request can
    also force one with the header x-batchib-fault: 500|502|503|drop|hang|truncate|quota|401.
    """
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
            rpm=rpm,
            tpm=tpm,
            burst_s=burst_s,
            rate_headers=not no_rate_headers,
            faults=FaultRates(
                error_500=fail_500,
                error_502=fail_502,
                error_503=fail_503,
                drop=drop,
                hang=hang,
                truncate=truncate,
                quota=quota,
                revoke_after=revoke_after,
                hang_s=hang_s,
            ),
            log_path=log_path,
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
