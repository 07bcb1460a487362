"""The command line: options and environment in, a Job built, one call, messages and an
exit status out. No business logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar

import click
import orjson

from batchib import eventloop
from batchib.config import DEFAULT_BASE_URL, ApiKey, Job, RequestDefaults, RunSettings
from batchib.control import (
    EXIT_ABORTED,
    EXIT_HUNG_UP,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_SOME_FAILED,
    EXIT_TERMINATED,
    RunControl,
)
from batchib.errors import BatchibError, ConfigError, OutputError
from batchib.lock import LockedError, OutputLock
from batchib.pricing import PriceTable
from batchib.stderr import say

if TYPE_CHECKING:
    from batchib.eventlog import EventLog
    from batchib.idstore import IdStore
    from batchib.parseproc import Parser
from batchib.version import __version__

KEY_VARIABLES = ("BATCHIB_API_KEY", "INFINITYBLUE_API_KEY", "OPENAI_API_KEY")


# Set in the click context's meta by `run --log-format json`: every message on stderr is
# then one JSON object, like the start, progress and end events.
JSON_MESSAGES = "batchib.json_messages"


def _fail(message: str, status: int = EXIT_ABORTED) -> NoReturn:
    _say("error", message, f"batchib: error: {message}", exit_status=status)
    sys.exit(status)


def _say(event: str, message: str, text: str, **fields: Any) -> None:
    """A message on stderr: `text`, or the event as a JSON object in json log mode."""
    context = click.get_current_context(silent=True)
    if context is not None and context.meta.get(JSON_MESSAGES):
        from batchib.eventlog import json_line

        text = json_line(event, {"message": message, **fields})
    say(text)


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """Settings that fail validation are usage errors (exit 2), like click's own."""
    try:
        yield
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def read_api_key(key_file: Path | None) -> ApiKey:
    """The key from --api-key-file, else the first of KEY_VARIABLES that is set."""
    if key_file is not None:
        try:
            # utf-8-sig: a byte-order mark (an editor's) is not part of the key.
            return ApiKey(key_file.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {key_file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"cannot read the API key file {key_file}: not UTF-8 text (byte {exc.start})"
            ) from None
        except ConfigError as exc:
            raise ConfigError(f"{key_file}: {exc}") from exc
    for name in KEY_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return ApiKey(value)
    raise ConfigError(
        "no API key: set BATCHIB_API_KEY (or INFINITYBLUE_API_KEY, OPENAI_API_KEY) "
        "or pass --api-key-file; to try batchib without a key, see `make demo`"
    )


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    index, sep, count = value.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise click.BadParameter(f"{value!r} is not I/N with 1 <= I <= N", param_hint="--shard")
    return int(index), int(count)


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=JSON", param_hint="--param")
        try:
            params[key] = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(
                f"{key}: {text!r} is not JSON (quote strings: {key}='\"text\"')",
                param_hint="--param",
            ) from exc
    return params


class _LazyGroup(click.Group):
    """Commands whose modules are heavy (the simulator pulls in aiohttp.web) are imported
    only when run, so `batchib --help` and `batchib run` start fast."""

    lazy: ClassVar[dict[str, tuple[str, str, str]]] = {
        "simulate": (
            "batchib.simulator.cli",
            "simulate",
            "Serve an OpenAI-compatible gateway simulator until interrupted.",
        )
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            import importlib

            module, name, _ = self.lazy[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), name)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        """The command, with Ctrl-C outside a run's own handling (start-up, waiting for
        the lock) an interruption (exit 130), not click's "Aborted!" (exit 1), and in
        json log mode a usage error found after the options were read a JSON event."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED)
        except click.ClickException as exc:
            if not ctx.meta.get(JSON_MESSAGES):
                raise
            _fail(exc.format_message(), exc.exit_code)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The listing uses the lazy commands' one-line help, without importing them.
        rows = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        for name in names:
            if name in self.lazy:
                rows.append((name, self.lazy[name][2]))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchib")
def main() -> None:
    """Run large batches of chat completions against an OpenAI-compatible gateway."""


def console_main(parser: Parser | None = None) -> NoReturn:
    """The `batchib` command: the CLI, then an exit that skips the interpreter's teardown,
    as mypy's does. Freeing every object of aiohttp, click and the rest one by one took
    about 35 ms at each exit, 1% of a 20,000-request run; by then everything a command
    writes is closed, synced and unlocked, so only stdout and stderr are left to flush.
    An error that is not a SystemExit takes Python's usual way out (its traceback).
    `parser`: the input parser process started by :mod:`batchib.launch`, for `run`."""
    try:
        main(obj=parser)
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc.code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed pipe or stream, or none
            status = status or 120  # what Python's own exit says then
    os._exit(status)


def _exit_status(code: object) -> int:
    """What Python's exit makes of SystemExit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


F = TypeVar("F", bound=Callable[..., Any])


def _line_defaults_options(command: F) -> F:
    """The options that fill what an input line leaves out (run and estimate)."""
    for option in reversed(_LINE_DEFAULTS):
        command = option(command)
    return command


_LINE_DEFAULTS = [
    click.option("--model", help="Model for lines that name none."),
    click.option("--system", help="System message for lines that have none."),
    click.option(
        "--max-tokens", type=click.IntRange(min=1), help="max_tokens for lines without a cap."
    ),
    click.option(
        "--temperature", type=click.FloatRange(0, 2), help="temperature for lines without one."
    ),
    click.option(
        "--param",
        "params",
        multiple=True,
        metavar="KEY=JSON",
        help="Any body field for lines without it, e.g. --param seed=7. Repeatable.",
    ),
]


_pricing_option = click.option(
    "--pricing",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Price table (TOML, USD per 1M tokens by model or glob; see samples/pricing.toml): "
    "cost by model in the summary.",
)


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Options from a TOML file (its [run] table, or the top level) become defaults:
    the command line and the environment still win."""
    if not value:
        return
    import tomllib

    try:
        data = tomllib.loads(Path(value).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{value}: {exc}", param_hint="--config") from exc
    table = data.get("run", data)
    names: dict[str, str] = {}
    for option in ctx.command.params:
        if option.name is None:
            continue
        names[option.name] = option.name
        for flag in (*option.opts, *option.secondary_opts):
            if flag.startswith("--"):
                names[flag[2:].replace("-", "_")] = option.name
    defaults: dict[str, Any] = {}
    unknown = []
    for key, setting in table.items():
        name = names.get(key.replace("-", "_"))
        if name is None or name in ("config", "print_config"):
            unknown.append(key)
        else:
            defaults[name] = setting
    if unknown:
        raise click.BadParameter(
            f"{value}: unknown settings: {', '.join(sorted(unknown))}", param_hint="--config"
        )
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


@main.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    envvar="BATCHIB_CONFIG",
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="Read any of these options from a TOML file (a [run] table); the command line "
    "wins (env BATCHIB_CONFIG).",
)
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the effective settings (the key redacted) and exit.",
)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Send nothing: price and validate the inputs as `batchib estimate` does.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Results JSONL (appended to; a rerun skips what already succeeded).",
)
@click.option(
    "--summary",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Summary JSON path [default: OUTPUT.summary.json].",
)
@click.option(
    "--usage-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append the summary as one JSON line to this ledger.",
)
@_pricing_option
@click.option(
    "--max-cost",
    "max_cost_usd",
    type=click.FloatRange(min=0),
    help="Stop before the spend could exceed this many USD (needs --pricing and a "
    "completion cap on every request); exit 4, a rerun continues.",
)
@click.option(
    "--max-total-tokens",
    type=click.IntRange(min=1),
    help="Stop before the tokens used could exceed this; exit 4, a rerun continues.",
)
@click.option(
    "--order",
    type=click.Choice(["completion", "input"]),
    default="completion",
    show_default=True,
    help="Write results as they finish, or in input order (held in a bounded window).",
)
@click.option(
    "--reorder-window",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="With --order input: lines read ahead of the oldest unfinished one, at most.",
)
@click.option(
    "--compact",
    "compact_output",
    is_flag=True,
    help="At the end, rewrite OUTPUT to one line per custom_id (see `batchib compact`).",
)
@click.option(
    "--shard",
    callback=lambda ctx, param, value: _parse_shard(value),
    metavar="I/N",
    help="Process only the requests whose custom_id hashes to shard I of N (1..N), "
    "so N machines can split one input; `batchib report` merges their outputs.",
)
@click.option("--overwrite", is_flag=True, help="Start afresh: truncate OUTPUT, send everything.")
@_line_defaults_options
@click.option(
    "--base-url",
    envvar="BATCHIB_BASE_URL",
    default=DEFAULT_BASE_URL,
    show_default=True,
    help="Gateway base URL (env BATCHIB_BASE_URL).",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the API key from this file instead of the environment.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Requests in flight at most.",
)
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="Requests per minute.")
@click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="Tokens per minute.")
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Attempts per request, the first included.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds per attempt.",
)
@click.option(
    "--connect-timeout",
    "connect_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to establish a connection (part of each attempt).",
)
@click.option(
    "--breaker",
    "breaker_window",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Stop after this many attempts in a row fail alike on the server side "
    "(5xx or timeouts for at least --breaker-seconds, or 404); 0 turns it off.",
)
@click.option(
    "--breaker-seconds",
    "breaker_min_duration_s",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="How long transient failures must last before the breaker trips.",
)
@click.option(
    "--grace",
    "grace_s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds requests in flight may finish after Ctrl-C.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr [default: when stderr is a terminal].",
)
@click.option(
    "--wait-lock",
    is_flag=True,
    help="If another run is writing OUTPUT, wait for it instead of exiting with 75.",
)
@click.option(
    "--allow-mixed",
    is_flag=True,
    help="Append to OUTPUT even though it was written with other defaults or gateway.",
)
@click.option(
    "--allow-insecure",
    is_flag=True,
    help="Allow sending the key over plain http to a host that is not loopback.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per event on stderr (start, progress, end) for log "
    "collectors; no bar, no table.",
)
@click.option(
    "--log-every",
    "log_every_s",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds between progress lines when there is no progress bar; 0 for none.",
)
@click.option("-q", "--quiet", is_flag=True, help="No summary table on stderr.")
def run(
    print_config: bool,
    inputs: tuple[str, ...],
    dry_run: bool,
    output: Path,
    summary: Path | None,
    usage_log: Path | None,
    pricing: Path | None,
    max_cost_usd: float | None,
    max_total_tokens: int | None,
    order: str,
    reorder_window: int,
    compact_output: bool,
    shard: tuple[int, int] | None,
    overwrite: bool,
    model: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    params: tuple[str, ...],
    base_url: str,
    api_key_file: Path | None,
    concurrency: int,
    rpm: float | None,
    tpm: float | None,
    max_attempts: int,
    timeout_s: float,
    connect_timeout_s: float,
    breaker_window: int,
    breaker_min_duration_s: float,
    grace_s: float,
    progress: bool | None,
    wait_lock: bool,
    allow_mixed: bool,
    allow_insecure: bool,
    log_format: str,
    log_every_s: float,
    quiet: bool,
) -> None:
    """Send every request in the INPUT JSONL files ('-' for stdin); write results to OUTPUT.

    Exit status: 0 all succeeded, 1 aborted, 2 usage error, 3 some failed, 4 budget reached,
    75 another run holds OUTPUT, 130/143/129 interrupted (SIGINT/SIGTERM/SIGHUP).
    Interrupted and aborted runs resume when rerun.
    """
    if log_format == "json":
        click.get_current_context().meta[JSON_MESSAGES] = True
    with _usage_errors():
        defaults = RequestDefaults(
            model=model,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            params=parse_params(params),
        )
    if dry_run and not print_config:  # printing the settings wins, even over a file's
        from batchib.estimate import EstimateSettings

        with _usage_errors():
            prices = None if pricing is None else PriceTable.load(pricing)
        _print_estimate(
            inputs,
            defaults,
            EstimateSettings(
                requests_per_minute=rpm, tokens_per_minute=tpm, concurrency=concurrency
            ),
            prices,
            False,
            # What this run would send: its shard, without what OUTPUT already holds.
            shard=shard,
            done_in=None if overwrite else output,
        )
    try:
        key = read_api_key(api_key_file)
    except ConfigError as exc:
        _fail(str(exc))
    with _usage_errors():
        settings = RunSettings(
            api_key=key,
            base_url=base_url,
            concurrency=concurrency,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            breaker_window=breaker_window,
            breaker_min_duration_s=breaker_min_duration_s,
            grace_s=grace_s,
            allow_insecure=allow_insecure,
            order_input=order == "input",
            reorder_window=reorder_window,
        )
        job = Job(
            inputs=inputs,
            output=output,
            summary=summary,
            usage_log=usage_log,
            overwrite=overwrite,
            compact=compact_output,
            shard=shard,
            prices=None if pricing is None else PriceTable.load(pricing),
            max_cost_usd=max_cost_usd,
            max_total_tokens=max_total_tokens,
            defaults=defaults,
            settings=settings,
        )
        from batchib.runfiles import check_apart, check_writable

        check_apart(job)
    if print_config:
        click.echo(orjson.dumps(_effective(job), option=orjson.OPT_INDENT_2).decode())
        return
    for name in inputs:
        if name != "-" and not Path(name).is_file():
            _fail(f"input {name} does not exist or is not a file")
    try:
        check_writable(job)
    except OutputError as exc:
        _fail(str(exc))
    show_progress = sys.stderr.isatty() if progress is None else progress
    # Without a bar (cron, pipes), a progress line every log_every_s instead.
    events = None
    if log_format == "json" or (not show_progress and log_every_s > 0 and not quiet):
        from batchib.eventlog import EventLog

        events = EventLog(log_format, log_every_s)
        show_progress = False
    try:
        # Taken before the event loop starts, so that Ctrl-C while waiting just works.
        with OutputLock(job.output, wait=wait_lock):
            _refuse_mixed_results(job, allow_mixed)
            parser = click.get_current_context().obj  # see console_main
            result = eventloop.run(_run(job, show_progress, events, parser))
    except LockedError as exc:
        _fail(str(exc), EXIT_LOCKED)
    except BatchibError as exc:
        _fail(str(exc))
    if events is not None and log_format == "json":
        events.end(result)
        sys.exit(result["exit_status"])
    if result.get("stop") and quiet:  # the table says it otherwise
        say(f"batchib: {result['stop']['message']}")
    if not quiet:
        from batchib.summary import format_table

        say(format_table(result))
    sys.exit(result["exit_status"])


def _effective(job: Job) -> dict[str, Any]:
    return {**job.describe(), "api_key": repr(job.settings.api_key)}


def _refuse_mixed_results(job: Job, allow_mixed: bool) -> None:
    from batchib.manifest import differences, manifest_path

    changed = differences(job)
    if changed and not allow_mixed:
        raise click.UsageError(
            f"{job.output} holds results made with other settings "
            f"({manifest_path(job.output).name}):\n  "
            + "\n  ".join(changed)
            + "\nUse another -o, --overwrite to start afresh, or --allow-mixed to add to it."
        )


async def _run(
    job: Job, show_progress: bool, events: EventLog | None, parser: Parser | None
) -> dict[str, Any]:
    from batchib.job import run_job

    control = RunControl()
    with _signals_stop(control, job.settings.grace_s), _progress(job, show_progress) as bar:
        if events is None:
            on_progress = bar.update if bar is not None else (lambda stats: None)
            return await run_job(job, control=control, on_progress=on_progress, parser=parser)
        events.start(_effective(job))
        reporter = asyncio.create_task(events.report_periodically())
        try:
            return await run_job(job, control=control, on_progress=events.update, parser=parser)
        finally:
            reporter.cancel()


@contextlib.contextmanager
def _signals_stop(control: RunControl, grace_s: float) -> Iterator[None]:
    def on_signal(exit_status: int) -> None:
        if control.stopping:
            message = "stopping now"
        else:
            message = (
                f"interrupted: requests in flight may finish for up to {grace_s:g} s; "
                "interrupt again to stop at once"
            )
        _say("interrupt", message, f"\nbatchib: {message}", exit_status=exit_status)
        control.interrupt(exit_status)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, on_signal, EXIT_INTERRUPTED)
    loop.add_signal_handler(signal.SIGTERM, on_signal, EXIT_TERMINATED)
    # A closed terminal: stop as for SIGTERM (what is in flight finishes, a summary is
    # written), rather than die as the default would, with no summary.
    loop.add_signal_handler(signal.SIGHUP, on_signal, EXIT_HUNG_UP)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGHUP)


@contextlib.contextmanager
def _progress(job: Job, show: bool) -> Iterator[Any]:
    if not show:
        yield None
        return
    from batchib.progress import ProgressBar

    with ProgressBar(None) as bar:
        if job.shard is None:  # a shard's share of the lines is not known in advance
            bar.count_total(job.inputs)
        yield bar


@main.command()
@click.argument(
    "output", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="OUTPUT"
)
@click.option("--wait-lock", is_flag=True, help="Wait if a run is writing OUTPUT.")
def compact(output: Path, wait_lock: bool) -> None:
    """Rewrite OUTPUT to one line per custom_id: the latest success, else the latest
    failure. Atomic: a crash leaves the old file or the new, never half of one."""
    from batchib.compact import compact as compact_file

    try:
        with OutputLock(output, wait=wait_lock):
            done = compact_file(output)
    except LockedError as exc:
        _fail(str(exc), EXIT_LOCKED)
    except BatchibError as exc:
        _fail(str(exc))
    aside = f", {done.set_aside} unreadable set aside in {output}.torn" if done.set_aside else ""
    click.echo(
        f"batchib: {output}: {done.lines_before} lines -> {done.lines_after}{aside}", err=True
    )


@main.command()
@click.argument(
    "outputs",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="OUTPUT...",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def report(outputs: tuple[Path, ...], as_json: bool) -> None:
    """Recompute one summary from results files (a crashed run's, or a job's shards).

    Each custom_id counts once (its latest success, else its latest failure); usage
    counts every successful line, since each was paid for. Exit status 0 when every
    request succeeded, 3 otherwise.
    """
    from batchib.report import report as make_report

    resolved = [path.resolve() for path in outputs]
    for path in outputs:
        if resolved.count(path.resolve()) > 1:
            raise click.UsageError(f"{path} is given more than once: it would count twice")
    try:
        result = make_report(outputs)
    except OSError as exc:
        _fail(f"cannot read the results: {exc}")
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        counts, usage = result["counts"], result["usage"]["total"]
        click.echo(
            f"{counts['requests']} requests: {counts['succeeded']} succeeded, "
            f"{counts['failed']} failed, {counts['invalid_lines']} invalid lines; "
            f"{counts['successful_lines_paid']} successful answers paid for, "
            f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens"
        )
        if counts["unreadable_lines"]:
            click.echo(
                f"  {counts['unreadable_lines']} lines are not result records "
                "(a torn tail, or not a results file): requests may be unaccounted for"
            )
        for model, figures in result["usage"]["by_served_model"].items():
            click.echo(
                f"  {model:<32} {figures['requests']:>8} req {figures['total_tokens']:>12} tokens"
            )
    sys.exit(0 if result["status"] == "complete" else EXIT_SOME_FAILED)


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@_line_defaults_options
@_pricing_option
@click.option(
    "--expected-completion-tokens",
    type=click.IntRange(min=0),
    help="Expected reply length per choice, for the expected figures.",
)
@click.option(
    "--calibrate-from",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="OUTPUT",
    help="Learn the expected reply length per model from a previous run's results "
    "(repeatable); wins over --expected-completion-tokens for the models it saw.",
)
@click.option(
    "--assume-max-tokens",
    type=click.IntRange(min=1),
    help="Completion cap per choice to assume for lines that set none.",
)
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="Requests per minute.")
@click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="Tokens per minute.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--latency",
    "latency_s",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Assumed seconds per request, for the wall time.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def estimate(
    inputs: tuple[str, ...],
    model: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    params: tuple[str, ...],
    pricing: Path | None,
    expected_completion_tokens: int | None,
    calibrate_from: tuple[Path, ...],
    assume_max_tokens: int | None,
    rpm: float | None,
    tpm: float | None,
    concurrency: int,
    latency_s: float,
    as_json: bool,
) -> None:
    """Price INPUT files without sending anything (no key needed): requests, prompt
    tokens counted offline, completion and cost min / expected / max, and wall time.

    Every line is validated exactly as `run` does. Exit status 0, or 3 when some lines
    are invalid.
    """
    from batchib.estimate import EstimateSettings, calibrate

    with _usage_errors():
        defaults = RequestDefaults(
            model=model,
            system=system,
            max_tokens=max_tokens,
            temperature=temperature,
            params=parse_params(params),
        )
        prices = None if pricing is None else PriceTable.load(pricing)
    settings = EstimateSettings(
        calibration=calibrate(calibrate_from) if calibrate_from else None,
        expected_completion_tokens=expected_completion_tokens,
        assume_max_tokens=assume_max_tokens,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        concurrency=concurrency,
        latency_s=latency_s,
    )
    _print_estimate(inputs, defaults, settings, prices, as_json)


def _print_estimate(
    inputs: tuple[str, ...],
    defaults: RequestDefaults,
    settings: Any,
    prices: PriceTable | None,
    as_json: bool,
    shard: tuple[int, int] | None = None,
    done_in: Path | None = None,
) -> NoReturn:
    """Print the estimate of `inputs` (`shard` of them), leaving out the requests that
    already succeeded in the results file `done_in`, as a run would skip them."""
    from batchib.estimate import estimate as make_estimate
    from batchib.idstore import IdStore
    from batchib.source import InputFiles

    for name in inputs:
        if name != "-" and not Path(name).is_file():
            _fail(f"input {name} does not exist or is not a file")
    ids = IdStore()
    items: Any = InputFiles(inputs, defaults, ids, shard)
    not_done = None
    if done_in is not None:
        from batchib.results import load_done

        try:
            load_done(done_in, ids)
        except OSError as exc:
            ids.close()
            _fail(f"cannot read the results {done_in}: {exc.strerror}")
        items = not_done = _NotDone(items, ids)
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        from batchib.source import count_lines

        items = bar = tqdm(items, total=count_lines(inputs), unit="line", file=sys.stderr)
    try:
        result = make_estimate(items, settings, prices)
    except OSError as exc:
        _fail(f"cannot read the input: {exc}")
    finally:
        ids.close()
        if bar is not None:
            bar.close()
    if not_done is not None:
        result["already_done"] = not_done.skipped
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(_estimate_table(result))
        if not_done is not None and not_done.skipped:
            click.echo(f"{not_done.skipped} requests already succeeded in {done_in}: not counted")
    for example in result["invalid_examples"]:
        click.echo(f"batchib: {example['file']}:{example['line']}: {example['message']}", err=True)
    sys.exit(EXIT_SOME_FAILED if result["invalid_lines"] else 0)


class _NotDone:
    """Input items without the requests that already succeeded, which it counts."""

    def __init__(self, items: Iterable[Any], ids: IdStore) -> None:
        self._items = items
        self._ids = ids
        self.skipped = 0

    def __iter__(self) -> Iterator[Any]:
        from batchib.inputs import Request

        for item in self._items:
            if isinstance(item, Request) and self._ids.is_done(item.custom_id, item.body_hash):
                self.skipped += 1
            else:
                yield item


def _estimate_table(result: dict[str, Any]) -> str:
    def span(figures: dict[str, Any] | None, money: bool = False) -> str:
        if figures is None:
            return "unpriced"

        def show(value: Any) -> str:
            if value is None:
                return "?"
            return f"${value:.4f}" if money else f"{value:,}"

        maximum = "unbounded" if figures["max"] is None else show(figures["max"])
        return f"{show(figures['min'])} / {show(figures['expected'])} / {maximum}"

    total = result["total"]
    lines = [
        f"{'model':<28} {'requests':>9} {'prompt tok':>12}  completion min / expected / max"
        + ("   cost min / expected / max" if "cost_usd" in total else "")
    ]
    rows = [*result["by_model"].items(), ("TOTAL", total)]
    for name, figures in rows:
        line = (
            f"{name:<28} {figures['requests']:>9,} {figures['prompt_tokens']:>12,}  "
            f"{span(figures['completion_tokens'])}"
        )
        if "cost_usd" in figures:
            line += f"   {span(figures['cost_usd'], money=True)}"
        lines.append(line)
    lines.append(f"wall time at these limits: about {total['wall_time_s']:,} s")
    if total["completion_tokens"]["unbounded_requests"]:
        lines.append(
            f"{total['completion_tokens']['unbounded_requests']} requests set no completion "
            "cap: max is unbounded (use --assume-max-tokens)"
        )
    if total["completion_tokens"]["expected"] is None:
        lines.append("expected figures need --expected-completion-tokens")
    if result["invalid_lines"]:
        lines.append(f"{result['invalid_lines']} invalid lines (first ones on stderr)")
    return "\n".join(lines)
