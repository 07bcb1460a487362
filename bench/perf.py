"""`make bench`: batchib's throughput, CPU and memory against a bare aiohttp floor and the
OpenAI SDK, its start-up and its offline token counting. Under 10 minutes on 2 cores.

Every client is a subprocess run as a user runs it, against a canned server in another
process on loopback (bench/canned_server.py: a fixed reply, instant or 20 ms late). Each
client's wall time is measured around its process, its CPU and peak RSS are its own
(os.wait4). Every output is checked (N lines, N distinct ids, N x the canned token
counts), so a fast wrong client cannot win.

1. Throughput: {instant, 20 ms} x {-c 64, -c 256}; batchib and the floor alternate
   (--repeats times each), the SDK runs once; the median run of each by req/s is shown.
   First, batchib and the floor run once against each server, not counted (warm-up).
   When uvloop is installed, batchib also runs on asyncio's loop (BATCHIB_EVENT_LOOP=
   asyncio) and the floor on uvloop's in the instant -c 64 cell, alternating with the
   others: batchib uses uvloop when installed, so the floor on the same loop is the fair
   comparison, and the asyncio rows price the loop itself. In the same cell batchib also
   runs with its input parsed on the event loop (BATCHIB_PARSER=inline) instead of in its
   parser process, which prices that process. batchib's CPU and peak RSS include its
   parser process's: the CPU through wait4 (batchib reaps it), the peak RSS added from
   its summary (each process at its own peak: an upper bound of their sum).
2. Memory: batchib's peak RSS for --rss-lines input lines (instant server, -c 64).
3. Start-up: `batchib --help` and a 1-line `batchib run` (medians of 7), and
   `batchib estimate` prompt tokens counted per second on a 200k-line file.
4. --profile: one batchib run under py-spy (instant, -c 64), summarised in
   bench/profile.txt.

Writes bench/results.json (a full run; a reduced one only with --results) and prints a
markdown table.

    python bench/perf.py [--requests 20000] [--repeats 3] [--skip-sdk]
                         [--rss-lines 20000,200000,1000000] [--profile] [--results FILE]
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib.util
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson
from canned_server import COMPLETION_TOKENS, PROMPT_TOKENS
from harness import (
    BATCHIB,
    BENCH,
    ROOT,
    Measured,
    compile_package,
    run_measured,
    start_with_port_file,
    write_shorthand,
)

MODEL = "gpt-5.4-mini"
KEY = "bench-key-not-secret"
SERVERS = {"instant": 0.0, "20 ms": 20.0}
CONCURRENCIES = (64, 256)
SDK_TIMEOUT_S = 600.0
DEFAULT_REQUESTS = 20_000
DEFAULT_REPEATS = 3
DEFAULT_RSS_LINES = "20000,200000,1000000"
ESTIMATE_LINES = 200_000
STARTUP_RUNS = 7
RSS_FLAT_TOLERANCE = 0.10
RSS_LIMIT_MB = 100.0
TIMES = "\u00d7"  # the multiplication sign, for ratios
BIN = Path(sys.executable).parent  # the venv's bin: the batchib entry point, py-spy


@dataclass
class Run:
    client: str
    requests: int
    wall_s: float
    requests_per_s: float
    cpu_ms_per_request: float
    peak_rss_mb: float | None  # None where it cannot be told from the bench's own
    event_loop: str | None = None  # batchib's, from its summary
    input_parser: str | None = None  # batchib's: "process" or "event loop", from its summary
    # At the server: answers from the first to the last, per second (no start-up or exit).
    served_per_s: float | None = None

    @classmethod
    def of(
        cls,
        client: str,
        requests: int,
        measured: Measured,
        event_loop: str | None = None,
        rss_reported: bool = True,
        input_parser: str | None = None,
        extra_rss_mb: float = 0.0,
    ) -> Run:
        """`extra_rss_mb`: the peak RSS of a process of the client's own that os.wait4's
        figure (the largest of the process and its children) leaves out."""
        return cls(
            client=client,
            requests=requests,
            wall_s=round(measured.wall_s, 3),
            requests_per_s=round(requests / measured.wall_s, 1),
            cpu_ms_per_request=round(measured.cpu_s * 1000 / requests, 4),
            peak_rss_mb=round(measured.peak_rss_mb + extra_rss_mb, 1) if rss_reported else None,
            event_loop=event_loop,
            input_parser=input_parser,
        )

    def line(self) -> str:
        served = f", served {self.served_per_s:,.0f}/s" if self.served_per_s else ""
        return (
            f"{self.requests_per_s:8,.0f} req/s  {self.cpu_ms_per_request:.3f} CPU ms/req  "
            f"{rss_text(self.peak_rss_mb):>6} MB  ({self.wall_s:.2f} s{served})"
        )


def rss_text(peak_rss_mb: float | None) -> str:
    return "—" if peak_rss_mb is None else f"{peak_rss_mb:.1f}"


def fail(label: str, message: str) -> NoReturn:
    raise SystemExit(f"CHECK FAILED: {label}: {message}")


def check(condition: bool, label: str, message: str) -> None:
    if not condition:
        fail(label, message)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any BATCHIB_* setting of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHIB_")}
    return {**env, **extra}


def remove_outputs(output: Path) -> None:
    """An output and its sidecars (summary, manifest, lock...)."""
    for path in output.parent.glob(output.name + "*"):
        path.unlink()


def timeout_for(requests: int) -> float:
    """A guard against a hung client, far above any expected run time."""
    return 120 + requests / 100


def own_peak_rss_mb() -> float:
    """This process's own high-water RSS (VmHWM), which a forked child starts from."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measured_ok(
    command: list[str],
    env: dict[str, str],
    label: str,
    timeout_s: float,
    rss_reported: bool = True,
) -> Measured:
    parent_peak = own_peak_rss_mb()
    measured = run_measured(command, env=env, timeout_s=timeout_s)
    child_peak = measured.usage.ru_maxrss / 1024
    check(
        not rss_reported or child_peak > parent_peak + 1,
        label,
        f"peak RSS {child_peak:.1f} MB is not above this bench's own {parent_peak:.1f} MB, "
        "which a forked child inherits: the figure would not be the client's",
    )
    if measured.timed_out:
        fail(label, f"no exit after {timeout_s:.0f} s (killed)")
    check(
        measured.exit_code == 0,
        label,
        f"exit status {measured.exit_code}; stderr: {measured.stderr_tail()}",
    )
    return measured


# --- the three clients ------------------------------------------------------------------


def batchib_command(source: Path, output: Path, url: str, concurrency: int) -> list[str]:
    return [
        *BATCHIB,
        "run",
        str(source),
        "-o",
        str(output),
        "--overwrite",
        "--model",
        MODEL,
        "--base-url",
        url,
        "-c",
        str(concurrency),
        "-q",
        "--no-progress",
    ]


def check_batchib_output(output: Path, requests: int, label: str) -> dict[str, Any]:
    """Every line parsed: ids, status and usage; then the summary's counts and usage.

    Returns the summary."""
    ids = IdCheck(requests)
    lines = prompt = completion = 0
    with open(output, "rb") as stream:
        for raw in stream:
            lines += 1
            try:
                record = orjson.loads(raw)
                response = record["response"]
                status = response["status_code"]
                usage = response["body"]["usage"]
                ids.add(record["custom_id"])
                prompt += usage["prompt_tokens"]
                completion += usage["completion_tokens"]
                outcome = record["batchib"]["status"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                fail(label, f"output line {lines} unreadable ({exc!r}): {raw[:300]!r}")
            if status != 200 or outcome != "succeeded":
                fail(label, f"output line {lines}: status {status}, {outcome}")
    check_totals(label, requests, lines, ids, prompt, completion)
    summary = orjson.loads(Path(f"{output}.summary.json").read_bytes())
    counts = summary["counts"]
    total = summary["usage"]["total"]
    expected = {
        "counts.lines": (counts["lines"], requests),
        "counts.sent": (counts["sent"], requests),
        "counts.succeeded": (counts["succeeded"], requests),
        "counts.failed": (counts["failed"], 0),
        "counts.invalid_lines": (counts["invalid_lines"], 0),
        "usage.total.prompt_tokens": (total["prompt_tokens"], requests * PROMPT_TOKENS),
        "usage.total.completion_tokens": (
            total["completion_tokens"],
            requests * COMPLETION_TOKENS,
        ),
        "exit_status": (summary["exit_status"], 0),
    }
    for name, (got, want) in expected.items():
        check(got == want, label, f"summary {name} is {got}, expected {want}")
    return summary


class IdCheck:
    """The output's custom_ids against the input's r0..r{N-1}, in N bytes, not a set of N
    strings: this process must stay small, because a child started by fork inherits its
    parent's peak RSS as its own starting ru_maxrss (Linux carries the old mm's
    high-water mark over exec), which would inflate every client's figure after it."""

    def __init__(self, requests: int) -> None:
        self.seen = bytearray(requests)
        self.distinct = 0
        self.foreign: list[str] = []

    def add(self, custom_id: str) -> None:
        index = int(custom_id[1:]) if custom_id[:1] == "r" and custom_id[1:].isdigit() else -1
        if not 0 <= index < len(self.seen) or f"r{index}" != custom_id:
            self.foreign.append(custom_id)
        elif not self.seen[index]:
            self.seen[index] = 1
            self.distinct += 1


def check_totals(
    label: str, requests: int, lines: int, ids: IdCheck, prompt: int, completion: int
) -> None:
    check(lines == requests, label, f"{lines} output lines, expected {requests}")
    check(not ids.foreign, label, f"ids not in the input, e.g. {ids.foreign[:3]}")
    check(ids.distinct == requests, label, f"{ids.distinct} distinct ids, expected {requests}")
    check(
        prompt == requests * PROMPT_TOKENS,
        label,
        f"{prompt} prompt tokens, expected {requests * PROMPT_TOKENS}",
    )
    check(
        completion == requests * COMPLETION_TOKENS,
        label,
        f"{completion} completion tokens, expected {requests * COMPLETION_TOKENS}",
    )


def check_printed_totals(output: Path, measured: Measured, requests: int, label: str) -> None:
    """floor and SDK: their output's lines and ids, the totals they print."""
    try:
        totals = orjson.loads(measured.stdout.strip().splitlines()[-1])
    except (IndexError, orjson.JSONDecodeError):
        fail(label, f"no totals printed: {measured.stdout[-300:]!r}")
    check(totals["succeeded"] == requests, label, f"{totals['succeeded']} succeeded")
    check(totals["failed"] == 0, label, f"{totals['failed']} failed")
    ids = IdCheck(requests)
    lines = 0
    with open(output, "rb") as stream:
        for raw in stream:
            lines += 1
            ids.add(orjson.loads(raw)["custom_id"])
    check_totals(label, requests, lines, ids, totals["prompt_tokens"], totals["completion_tokens"])


def run_batchib(
    source: Path,
    output: Path,
    url: str,
    concurrency: int,
    requests: int,
    label: str,
    loop: str | None = None,
    parser: str | None = None,
) -> Run:
    """batchib as a user runs it; `loop="asyncio"` sets BATCHIB_EVENT_LOOP=asyncio,
    `parser="inline"` BATCHIB_PARSER=inline."""
    extra = {"BATCHIB_EVENT_LOOP": loop} if loop else {}
    if parser:
        extra["BATCHIB_PARSER"] = parser
    measured = measured_ok(
        batchib_command(source, output, url, concurrency),
        clean_env(BATCHIB_API_KEY=KEY, **extra),
        label,
        timeout_for(requests),
    )
    summary = check_batchib_output(output, requests, label)
    ran_on = summary.get("event_loop")
    if loop is not None and ran_on is not None:
        check(ran_on == loop, label, f"ran on {ran_on}, not {loop}")
    parsed = summary.get("input_parser") or {}
    if parser == "inline":
        check(parsed.get("where") == "event loop", label, f"input parsed: {parsed}")
    parser_rss_mb = 0.0
    if parsed.get("where") == "process":
        check(
            measured.cpu_s >= parsed["cpu_s"],
            label,
            f"CPU {measured.cpu_s:.3f} s leaves out the parser process's {parsed['cpu_s']} s",
        )
        parser_rss_mb = parsed["peak_rss_mb"]
    remove_outputs(output)
    client = "batchib" + (f"-{loop}" if loop else "") + (f"-{parser}" if parser else "")
    return Run.of(
        client,
        requests,
        measured,
        None if ran_on is None else str(ran_on),
        input_parser=parsed.get("where"),
        extra_rss_mb=parser_rss_mb,
    )


def run_script(
    client: str,
    script: str,
    target: tuple[Path, Path, str, int, int, str],
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    rss_reported: bool = True,
) -> Run:
    """One of the bench's own clients (bench/SCRIPT INPUT OUTPUT URL MODEL C [EXTRA]),
    which print their totals: measured, its output and totals checked.
    `target`: (input, output, URL, concurrency, requests, label)."""
    source, output, url, concurrency, requests, label = target
    command = [
        sys.executable,
        str(BENCH / script),
        str(source),
        str(output),
        url,
        MODEL,
        str(concurrency),
        *extra_args,
    ]
    measured = measured_ok(
        command, env or clean_env(), label, timeout_for(requests), rss_reported=rss_reported
    )
    check_printed_totals(output, measured, requests, label)
    remove_outputs(output)
    return Run.of(client, requests, measured, rss_reported=rss_reported)


def run_floor(
    source: Path,
    output: Path,
    url: str,
    concurrency: int,
    requests: int,
    label: str,
    loop: str | None = None,
) -> Run:
    """The bare aiohttp loop on asyncio's loop, or on uvloop's with `loop="uvloop"`."""
    return run_script(
        "floor" if loop is None else f"floor-{loop}",
        "floor_client.py",
        (source, output, url, concurrency, requests, label),
        (loop,) if loop else (),
    )


def run_sdk(
    source: Path, output: Path, url: str, concurrency: int, requests: int, label: str
) -> Run:
    env = clean_env(OPENAI_API_KEY=KEY)
    env.pop("OPENAI_BASE_URL", None)
    return run_script(
        "sdk",
        "sdk_client.py",
        (source, output, url, concurrency, requests, label),
        (str(SDK_TIMEOUT_S),),
        env,
    )


def run_wire(
    source: Path, output: Path, url: str, concurrency: int, requests: int, label: str
) -> Run:
    """No HTTP library: bare asyncio protocols on uvloop, a reference for the ceiling.
    Smaller than this bench's own process: its peak RSS cannot be told from the one a
    forked child inherits, so none is reported."""
    return run_script(
        "wire",
        "wire_client.py",
        (source, output, url, concurrency, requests, label),
        rss_reported=False,
    )


CLIENTS = {
    "batchib": run_batchib,
    "batchib-asyncio": functools.partial(run_batchib, loop="asyncio"),
    "batchib-inline": functools.partial(run_batchib, parser="inline"),
    "floor": run_floor,
    "floor-uvloop": functools.partial(run_floor, loop="uvloop"),
    "wire": run_wire,
    "sdk": run_sdk,
}
CLIENT_NAMES = {
    "batchib": "batchib",
    "batchib-asyncio": "batchib, asyncio loop",
    "batchib-inline": "batchib, input parsed on the loop",
    "floor": "floor (aiohttp)",
    "floor-uvloop": "floor (aiohttp), uvloop",
    "wire": "wire (no HTTP library), uvloop",
    "sdk": "OpenAI SDK",
}
# Run once against each server before anything is measured: the first runs after the
# servers start came out slower, and batchib, first in every round, took that alone (its
# first run in the instant c=64 cell read 0.94x the floor where the next two read 0.99x
# and 1.00x).
WARM_UP = ("batchib", "floor")

# Where batchib also runs on asyncio's loop and the floor on uvloop's, if uvloop is there.
LOOP_CELL = ("instant", 64)
# Where the wire client runs too: the cell whose target is a share of a ceiling.
WIRE_CELL = ("20 ms", 64)


class CannedServer:
    """A running bench/canned_server.py: its URL, and its count of answers per run."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, url: str, stats: Path):
        self.process, self.log, self.url, self.stats_file = process, log, url, stats
        self.reports = 0

    def served(self) -> dict[str, Any]:
        """The answers since the last call, and the times of the first and the last
        (SIGUSR1 makes the server write them and start counting again)."""
        self.reports += 1
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a benchmark waiting for its child
            try:
                stats: dict[str, Any] = orjson.loads(self.stats_file.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                stats = {}
            if stats.get("report") == self.reports:
                return stats
            time.sleep(0.01)
        raise SystemExit(f"the canned server at {self.url} did not report its answers")


def paired_ratio(runs: list[Run], baselines: list[Run], figure: str) -> float:
    """The median over rounds of run / baseline for `figure` (runs of the same round)."""
    ratios = [
        getattr(run, figure) / getattr(baseline, figure)
        for run, baseline in zip(runs, baselines, strict=True)
    ]
    return round(statistics.median(ratios), 3)


def median_run(runs: list[Run]) -> Run:
    """The median run by req/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda run: run.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


# --- phases -------------------------------------------------------------------------------


def throughput_cell(
    server: str,
    latency_ms: float,
    canned: CannedServer,
    concurrency: int,
    source: Path,
    requests: int,
    repeats: int,
    with_sdk: bool,
    with_asyncio_loop: bool,
    workdir: Path,
) -> dict[str, Any]:
    """One server x concurrency: the clients alternate on the same input; medians, ratios."""
    cell = f"{server} server, c={concurrency}"
    one_round = (
        ["batchib", "batchib-inline", "batchib-asyncio", "floor", "floor-uvloop"]
        if with_asyncio_loop
        else ["batchib", "floor"]
    )
    if (server, concurrency) == WIRE_CELL:
        one_round.append("wire")
    order = one_round * repeats + (["sdk"] if with_sdk else [])
    runs: dict[str, list[Run]] = {client: [] for client in dict.fromkeys(order)}
    held_ms: list[dict[str, float]] = []  # per run, how long the server held late replies
    for client in order:
        label = f"{client} ({cell}, run {len(runs[client]) + 1})"
        output = workdir / f"out-{client}.jsonl"
        canned.served()  # counting starts from here
        run = CLIENTS[client](source, output, canned.url, concurrency, requests, label)
        served = canned.served()
        check(
            served["answered"] == requests,
            label,
            f"the server answered {served['answered']} requests, expected {requests}",
        )
        span_s = served["last_s"] - served["first_s"]
        run.served_per_s = round((requests - 1) / span_s, 1) if span_s > 0 else None
        if latency_ms:
            held = served["held_ms"]
            # A reply sent early would let any client beat the ceiling.
            check(
                held["min"] >= latency_ms,
                label,
                f"the server held a reply {held['min']} ms, less than its {latency_ms} ms",
            )
            held_ms.append(held)
        runs[client].append(run)
        print(f"  {label:48} {run.line()}", flush=True)
    median = {client: median_run(client_runs) for client, client_runs in runs.items()}
    floor, sdk = median["floor"], median.get("sdk")
    result: dict[str, Any] = {
        "server": server,
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "requests": requests,
        "median": {client: asdict(run) for client, run in median.items()},
        # client / floor: req/s (above 1 is faster) and CPU ms per request (above 1 costs
        # more). Paired: the median over rounds of each round's ratio, the two runs minutes
        # apart at most, so a slow spell of the machine that spans a round cancels out.
        "vs_floor": {
            client: {
                figure: paired_ratio(client_runs, runs["floor"], figure)
                for figure in ("requests_per_s", "cpu_ms_per_request")
            }
            for client, client_runs in runs.items()
            if client not in ("floor", "sdk")
        },
        # The same as a ratio of the medians, for comparison.
        "vs_floor_of_medians": {
            client: {
                "requests_per_s": round(run.requests_per_s / floor.requests_per_s, 3),
                "cpu_ms_per_request": round(run.cpu_ms_per_request / floor.cpu_ms_per_request, 3),
            }
            for client, run in median.items()
            if client != "floor"
        },
        # client / SDK, req/s
        "vs_sdk": {
            client: round(run.requests_per_s / sdk.requests_per_s, 3)
            for client, run in median.items()
            if sdk is not None and client != "sdk"
        },
        "runs": {
            client: [asdict(run) for run in client_runs] for client, client_runs in runs.items()
        },
    }
    if latency_ms:
        ceiling = concurrency / (latency_ms / 1000)
        result["ceiling_requests_per_s"] = round(ceiling, 1)
        result["of_ceiling"] = {
            client: round(run.requests_per_s / ceiling, 3) for client, run in median.items()
        }
        result["served_of_ceiling"] = {
            client: round(run.served_per_s / ceiling, 3)
            for client, run in median.items()
            if run.served_per_s is not None
        }
        result["server_held_ms"] = {
            "min": min(held["min"] for held in held_ms),
            "mean": round(statistics.mean(held["mean"] for held in held_ms), 3),
            "max": max(held["max"] for held in held_ms),
        }
    return result


def memory(
    rss_lines: list[int],
    url: str,
    workdir: Path,
    reusable: tuple[int, Run] | None,
    keep: int,
) -> tuple[dict[str, Any], int]:
    """Peak RSS by input size (instant server, -c 64). Returns the results and requests sent."""
    runs: list[dict[str, Any]] = []
    sent = 0
    for lines in rss_lines:
        if reusable is not None and reusable[0] == lines:
            run, source_of = reusable[1], "the median batchib run of the instant c=64 cell"
        else:
            source = workdir / f"input-{lines}.jsonl"
            if not source.exists():
                write_shorthand(source, lines)
            label = f"batchib (memory, {lines:,} lines, instant server, c=64)"
            run = run_batchib(source, workdir / "out-rss.jsonl", url, 64, lines, label)
            sent += lines
            source_of = "its own run"
            if lines != keep:
                source.unlink()
        runs.append({"lines": lines, "source": source_of, **asdict(run)})
        print(f"  batchib, {lines:>9,} lines: {run.line()}", flush=True)
    result: dict[str, Any] = {"server": "instant", "concurrency": 64, "runs": runs}
    if runs:
        smallest = min(runs, key=lambda r: r["lines"])
        largest = max(runs, key=lambda r: r["lines"])
        growth = largest["peak_rss_mb"] / smallest["peak_rss_mb"] - 1
        result.update(
            {
                "smallest_lines": smallest["lines"],
                "largest_lines": largest["lines"],
                "largest_vs_smallest_rss": round(growth, 3),
                "flat": growth <= RSS_FLAT_TOLERANCE if len(runs) > 1 else None,
                "flat_means": f"peak RSS at {largest['lines']:,} lines within "
                f"{RSS_FLAT_TOLERANCE:.0%} of that at {smallest['lines']:,}",
                "under_100_mb": all(r["peak_rss_mb"] < RSS_LIMIT_MB for r in runs),
            }
        )
    return result, sent


def startup(url: str, workdir: Path) -> dict[str, Any]:
    entry = BIN / "batchib"
    if not entry.exists():
        raise SystemExit(f"no batchib entry point at {entry}: run with the venv's python")
    helps = [
        measured_ok(
            [str(entry), "--help"], clean_env(), "batchib --help", 60, rss_reported=False
        ).wall_s
        for _ in range(STARTUP_RUNS)
    ]
    one = workdir / "one.jsonl"
    write_shorthand(one, 1)
    output = workdir / "out-one.jsonl"
    command = [str(entry), *batchib_command(one, output, url, 16)[len(BATCHIB) :]]
    runs = []
    for _ in range(STARTUP_RUNS):
        label = "batchib run on 1 line"
        runs.append(
            measured_ok(
                command, clean_env(BATCHIB_API_KEY=KEY), label, 60, rss_reported=False
            ).wall_s
        )
        check_batchib_output(output, 1, label)
    remove_outputs(output)
    return {
        "entry_point": "batchib (the venv's console script)",
        "help_wall_s_median": round(statistics.median(helps), 3),
        "help_wall_s_runs": [round(s, 3) for s in helps],
        "run_one_line_wall_s_median": round(statistics.median(runs), 3),
        "run_one_line_wall_s_runs": [round(s, 3) for s in runs],
    }


def estimate(source: Path, lines: int) -> dict[str, Any]:
    label = f"batchib estimate ({lines:,} lines)"
    command = [str(BIN / "batchib"), "estimate", str(source), "--json", "--model", MODEL]
    measured = measured_ok(command, clean_env(), label, timeout_for(lines))
    report = orjson.loads(measured.stdout)
    total = report["total"]
    check(total["requests"] == lines, label, f"{total['requests']} requests, expected {lines}")
    check(report["invalid_lines"] == 0, label, f"{report['invalid_lines']} invalid lines")
    tokens = total["prompt_tokens"]
    return {
        "lines": lines,
        "prompt_tokens": tokens,
        "wall_s": round(measured.wall_s, 3),
        "cpu_s": round(measured.cpu_s, 3),
        "peak_rss_mb": round(measured.peak_rss_mb, 1),
        "prompt_tokens_per_s": round(tokens / measured.wall_s),
        "lines_per_s": round(lines / measured.wall_s),
    }


FRAME_LINE = re.compile(r":\d+\)$")


def summarise_profile(raw: str, header: str, top_self: int = 30, top_total: int = 50) -> str:
    """py-spy raw stacks (`frame;frame;... COUNT`) to top functions, line numbers dropped."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [FRAME_LINE.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):  # once per stack, however deep the recursion
            inclusive[frame] += n
    if not samples:
        return header + "\nno samples\n"

    def table(title: str, counter: collections.Counter[str], top: int) -> list[str]:
        rows = [title, f"{'self %':>7} {'total %':>8} {'samples':>8}  function (file)"]
        for frame, _ in counter.most_common(top):
            rows.append(
                f"{own[frame] / samples:7.1%} {inclusive[frame] / samples:8.1%} "
                f"{counter[frame]:8d}  {frame}"
            )
        return rows

    out = [header, f"{samples} samples", ""]
    out += table(f"Top {top_self} functions by self time", own, top_self)
    out += [""]
    out += table(f"Top {top_total} functions by inclusive time", inclusive, top_total)
    return "\n".join(out) + "\n"


def profile(url: str, source: Path, requests: int, workdir: Path) -> dict[str, Any]:
    py_spy = BIN / "py-spy" if (BIN / "py-spy").exists() else shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: make .venv/.bench-stamp")
    raw = workdir / "profile.raw"
    output = workdir / "out-profile.jsonl"
    label = f"batchib under py-spy (instant server, c=64, {requests:,} requests)"
    command = [
        str(py_spy),
        "record",
        # Not paused to take each sample: a paused loop thread neither runs nor waits for
        # a CPU, so batchib would count the pauses as time to spare (batchib.eagerwrite).
        "--nonblocking",
        "-r",
        "500",
        "-f",
        "raw",
        "-o",
        str(raw),
        "--",
        *batchib_command(source, output, url, 64),
    ]
    # py-spy is the child here; its RSS is not reported.
    measured = measured_ok(
        command, clean_env(BATCHIB_API_KEY=KEY), label, timeout_for(requests), rss_reported=False
    )
    check_batchib_output(output, requests, label)
    remove_outputs(output)
    header = (
        f"py-spy record --nonblocking -r 500 of `batchib run` ({requests:,} requests, "
        f"instant canned server, -c 64), {time.strftime('%Y-%m-%d')}, commit {git_commit()}; "
        f"{measured.wall_s:.2f} s wall under the profiler.\n"
        "self % = samples with the function on top; total % = samples with it anywhere on "
        "the stack. Line numbers dropped. Idle time (the event loop waiting) is not sampled. "
        "On uvloop, time in the loop's own C code counts as Runner.run's self time."
    )
    target = BENCH / "profile.txt"
    target.write_text(summarise_profile(raw.read_text(), header))
    print(f"  profile written: {target.relative_to(ROOT)}", flush=True)
    return {"file": str(target.relative_to(ROOT)), "wall_s": round(measured.wall_s, 3)}


# --- context and report -------------------------------------------------------------------


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def context() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "batchib"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    from batchib.version import __version__

    return {
        "machine": {
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "cpu_model": cpu,
            "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "batchib_version": __version__,
        "git_commit": git_commit(),
        "batchib_uncommitted_changes": bool(dirty),
        "uvloop_importable": importlib.util.find_spec("uvloop") is not None,
    }


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| server | c | client | req/s | served req/s | CPU ms/req | peak RSS MB | vs floor "
        "(req/s, CPU/req) | vs SDK (req/s) | of ceiling (served) |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for cell in results["throughput"]:
        ceiling = cell.get("ceiling_requests_per_s")
        for client, run in cell["median"].items():
            vs_floor = vs_sdk = "—"
            if client.startswith("batchib"):
                ratio = cell["vs_floor"][client]
                speed, cpu = ratio["requests_per_s"], ratio["cpu_ms_per_request"]
                vs_floor = f"{speed:.2f}{TIMES}, {cpu:.2f}{TIMES}"
                if client in cell["vs_sdk"]:
                    vs_sdk = f"{cell['vs_sdk'][client]:.2f}{TIMES}"
            of_ceiling = "—"
            if ceiling:
                of_ceiling = f"{cell['of_ceiling'][client]:.0%} of {ceiling:,.0f}"
                if client in cell.get("served_of_ceiling", {}):
                    of_ceiling += f" ({cell['served_of_ceiling'][client]:.0%})"
            served = run.get("served_per_s")
            rows.append(
                f"| {cell['server']} | {cell['concurrency']} | {CLIENT_NAMES[client]} | "
                f"{run['requests_per_s']:,.0f} | {'—' if served is None else f'{served:,.0f}'} | "
                f"{run['cpu_ms_per_request']:.3f} | "
                f"{rss_text(run['peak_rss_mb'])} | {vs_floor} | {vs_sdk} | {of_ceiling} |"
            )
    held = [
        f"{cell['server']}, c={cell['concurrency']}: {h['min']:.3f}-{h['max']:.1f} ms "
        f"(mean {h['mean']:.3f})"
        for cell in results["throughput"]
        if (h := cell.get("server_held_ms"))
    ]
    settings = results["settings"]
    runs = f"the median run by req/s of {settings['repeats']} for batchib and the floor"
    loops = sorted(
        {
            str(run.get("event_loop"))
            for cell in results["throughput"]
            for run in cell["median"].values()
            if run["client"] == "batchib"
        }
    )
    out = [
        f"{settings['requests']:,} requests per run, after a warm-up run of batchib and the "
        f"floor against each server; {runs}"
        f"{', one SDK run' if settings['sdk'] else ' (SDK skipped)'}; req/s over the whole "
        "process (start-up and exit included); served req/s at the server, from the first "
        "answer to the last (neither); CPU and peak RSS the client process's own (batchib's "
        "with its input parser process, added); vs floor: "
        "the median of each round's ratio (the runs of a round are back to back). "
        f"batchib's event loop (from its summary): {', '.join(loops)}; the floor and the "
        "SDK run on asyncio's.",
        "",
        *rows,
    ]
    if held:
        out += ["", f"The late server held each reply (every run): {'; '.join(held)}."]
    mem = results.get("memory")
    if mem and mem["runs"]:
        out += [
            "",
            "| input lines (instant, c=64) | batchib peak RSS MB | req/s | CPU ms/req |",
            "|---:|---:|---:|---:|",
        ]
        for run in mem["runs"]:
            out.append(
                f"| {run['lines']:,} | {run['peak_rss_mb']:.1f} | {run['requests_per_s']:,.0f} "
                f"| {run['cpu_ms_per_request']:.3f} |"
            )
        if mem["flat"] is None:
            verdict = "flatness not judged (one input size)"
        else:
            verdict = (
                f"{'flat' if mem['flat'] else 'NOT flat'}: peak RSS at "
                f"{mem['largest_lines']:,} lines {mem['largest_vs_smallest_rss']:+.1%} vs "
                f"{mem['smallest_lines']:,} (flat: within {RSS_FLAT_TOLERANCE:.0%})"
            )
        out += [
            "",
            f"Memory: {verdict}; {'under' if mem['under_100_mb'] else 'NOT under'} "
            f"{RSS_LIMIT_MB:.0f} MB.",
        ]
    s, e = results["startup"], results["estimate"]
    out += [
        f"Start-up: `batchib --help` {s['help_wall_s_median']:.3f} s, `batchib run` on 1 line "
        f"{s['run_one_line_wall_s_median']:.3f} s (medians of {STARTUP_RUNS}); "
        f"`batchib estimate` {e['prompt_tokens_per_s']:,} prompt tokens/s "
        f"({e['lines']:,} lines, {e['prompt_tokens']:,} tokens in {e['wall_s']:.2f} s).",
    ]
    c = results["context"]
    m = c["machine"]
    out += [
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs ({m['arch']}), Python {m['python']}, "
        f"uvloop {'importable' if c['uvloop_importable'] else 'not installed'}; batchib "
        f"{c['batchib_version']} at {c['git_commit']}"
        f"{' + uncommitted changes' if c['batchib_uncommitted_changes'] else ''}; {c['date']}.",
    ]
    return "\n".join(out)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's targets, each with what this run measured and whether it is met (None:
    not measured in this run)."""
    cells = {(c["server"], c["concurrency"]): c for c in results.get("throughput", [])}
    instant, slow = cells.get(("instant", 64)), cells.get(("20 ms", 64))
    checks: list[tuple[str, float | None, str, bool | None]] = []

    def add(name: str, value: float | None, shown: str, met: bool | None) -> None:
        checks.append((name, value, shown, met))

    if instant is not None:
        ratio = instant["vs_floor"]["batchib"]
        add(
            "instant c=64: batchib req/s >= 1.0x the floor",
            ratio["requests_per_s"],
            f"{ratio['requests_per_s']:.2f}{TIMES}",
            ratio["requests_per_s"] >= 1.0,
        )
        add(
            "instant c=64: batchib CPU per request <= 1.2x the floor",
            ratio["cpu_ms_per_request"],
            f"{ratio['cpu_ms_per_request']:.2f}{TIMES}",
            ratio["cpu_ms_per_request"] <= 1.2,
        )
        sdk = instant["vs_sdk"].get("batchib")
        add(
            "instant c=64: batchib req/s >= 10x the OpenAI SDK",
            sdk,
            "not run" if sdk is None else f"{sdk:.1f}{TIMES}",
            None if sdk is None else sdk >= 10,
        )
    if slow is not None:
        share = slow["of_ceiling"]["batchib"]
        add("20 ms c=64: batchib >= 95% of 64 / 20 ms", share, f"{share:.0%}", share >= 0.95)
    mem = results.get("memory")
    if mem and mem["runs"]:
        largest = max(mem["runs"], key=lambda run: run["lines"])
        add(
            f"peak RSS at {largest['lines']:,} lines < {RSS_LIMIT_MB:.0f} MB",
            largest["peak_rss_mb"],
            f"{largest['peak_rss_mb']:.1f} MB",
            bool(mem["under_100_mb"]),
        )
        add(
            "peak RSS flat (largest input within 10% of the smallest)",
            mem.get("largest_vs_smallest_rss"),
            "one size only" if mem["flat"] is None else f"{mem['largest_vs_smallest_rss']:+.1%}",
            mem["flat"],
        )
    if results.get("startup"):
        help_s = results["startup"]["help_wall_s_median"]
        add("batchib --help < 0.3 s", help_s, f"{help_s:.3f} s", help_s < 0.3)
    return [
        {"target": name, "measured": value, "shown": shown, "met": met}
        for name, value, shown, met in checks
    ]


def targets_text(checks: list[dict[str, Any]]) -> str:
    mark = {True: "met", False: "NOT MET", None: "not judged"}
    return "\n".join(
        f"  {mark[check['met']]:>10}  {check['target']}: {check['shown']}" for check in checks
    )


# --- main ---------------------------------------------------------------------------------


def stop_server(process: subprocess.Popen[bytes], log: Path) -> int | None:
    """Stop a canned server; the number of requests it answered (None if it did not say)."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    text = log.read_bytes()
    if b"Traceback" in text:
        first = text[text.index(b"Traceback") :][:1500].decode(errors="replace")
        print(f"NOTE: the canned server logged errors ({log.name}):\n{first}", flush=True)
    try:
        return int(orjson.loads(text.strip().splitlines()[-1])["answered"])
    except (IndexError, KeyError, orjson.JSONDecodeError):
        return None


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--skip-sdk", action="store_true")
    parser.add_argument("--rss-lines", default=DEFAULT_RSS_LINES)
    parser.add_argument("--profile", action="store_true", help="also write bench/profile.txt")
    parser.add_argument(
        "--results",
        type=Path,
        help="results JSON [default: bench/results.json for a run with the default "
        "settings; a reduced run writes none unless given]",
    )
    args = parser.parse_args()
    compile_package()
    rss_lines = [int(n) for n in args.rss_lines.split(",") if n.strip()]
    full = (
        not args.skip_sdk
        and args.requests == DEFAULT_REQUESTS
        and args.repeats >= DEFAULT_REPEATS
        and rss_lines == [int(n) for n in DEFAULT_RSS_LINES.split(",")]
    )
    target: Path | None = args.results or (BENCH / "results.json" if full else None)
    n = args.requests
    results: dict[str, Any] = {
        "context": context(),
        "settings": {
            "requests": n,
            "repeats": args.repeats,
            "warm_up": [f"{client}, c=64, each server" for client in WARM_UP],
            "sdk": not args.skip_sdk,
            "model": MODEL,
            "canned_usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
            },
        },
    }
    expected_answers = dict.fromkeys(SERVERS, 0)
    uvloop_there = bool(results["context"]["uvloop_importable"])
    with tempfile.TemporaryDirectory(prefix="batchib-perf-") as temp:
        workdir = Path(temp)
        source = workdir / f"input-{n}.jsonl"
        write_shorthand(source, n)
        servers: dict[str, CannedServer] = {}
        urls: dict[str, str] = {}
        try:
            for name, latency_ms in SERVERS.items():
                tag = name.replace(" ", "")
                log = workdir / f"server-{tag}.out"
                stats = workdir / f"server-{tag}.stats.json"
                with open(log, "wb") as sink:
                    process, urls[name] = start_with_port_file(
                        [
                            sys.executable,
                            str(BENCH / "canned_server.py"),
                            "--port-file",
                            str(workdir / f"server-{tag}.url"),
                            "--latency-ms",
                            str(latency_ms),
                            "--stats-file",
                            str(stats),
                        ],
                        workdir / f"server-{tag}.url",
                        what=f"the canned server ({name})",
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                servers[name] = CannedServer(process, log, urls[name], stats)

            print(f"warm-up: {', '.join(WARM_UP)} once per server, c=64, not counted", flush=True)
            for name in SERVERS:
                for client in WARM_UP:
                    label = f"{client} ({name} server, c=64, warm-up)"
                    output = workdir / f"out-warm-up-{client}.jsonl"
                    run = CLIENTS[client](source, output, urls[name], 64, n, label)
                    print(f"  {label:48} {run.line()}", flush=True)
                    expected_answers[name] += n

            print(f"throughput: {n:,} requests per run", flush=True)
            results["throughput"] = []
            for name, latency_ms in SERVERS.items():
                for concurrency in CONCURRENCIES:
                    cell = throughput_cell(
                        name,
                        latency_ms,
                        servers[name],
                        concurrency,
                        source,
                        n,
                        args.repeats,
                        not args.skip_sdk,
                        uvloop_there and (name, concurrency) == LOOP_CELL,
                        workdir,
                    )
                    results["throughput"].append(cell)
                    expected_answers[name] += sum(len(runs) * n for runs in cell["runs"].values())
            instant64 = next(
                c
                for c in results["throughput"]
                if c["server"] == "instant" and c["concurrency"] == 64
            )
            reusable = (n, Run(**instant64["median"]["batchib"]))

            print(f"memory: {', '.join(f'{x:,}' for x in rss_lines)} lines", flush=True)
            results["memory"], sent = memory(
                rss_lines, urls["instant"], workdir, reusable, ESTIMATE_LINES
            )
            expected_answers["instant"] += sent

            print("start-up", flush=True)
            results["startup"] = s = startup(urls["instant"], workdir)
            print(
                f"  batchib --help {s['help_wall_s_median']:.3f} s, batchib run on 1 line "
                f"{s['run_one_line_wall_s_median']:.3f} s (medians of {STARTUP_RUNS})",
                flush=True,
            )
            expected_answers["instant"] += STARTUP_RUNS

            estimate_source = workdir / f"input-{ESTIMATE_LINES}.jsonl"
            if not estimate_source.exists():
                write_shorthand(estimate_source, ESTIMATE_LINES)
            results["estimate"] = estimate(estimate_source, ESTIMATE_LINES)
            e = results["estimate"]
            print(
                f"  batchib estimate, {e['lines']:,} lines: {e['prompt_tokens_per_s']:,} prompt "
                f"tokens/s ({e['wall_s']:.2f} s)",
                flush=True,
            )

            if args.profile:
                print("profile", flush=True)
                results["profile"] = profile(urls["instant"], source, n, workdir)
                expected_answers["instant"] += n
        finally:
            answered = {
                name: stop_server(server.process, server.log) for name, server in servers.items()
            }
        results["servers"] = {
            name: {"answered": answered[name], "requests_sent": expected_answers[name]}
            for name in servers
        }
    for name, figures in results["servers"].items():
        if figures["answered"] != figures["requests_sent"]:
            print(
                f"NOTE: the {name} server answered {figures['answered']} requests; the "
                f"clients' outputs account for {figures['requests_sent']} (retries?)",
                flush=True,
            )
    results["total_wall_s"] = round(time.perf_counter() - started, 1)
    table = markdown(results)
    results["table_markdown"] = table
    results["targets"] = targets(results)
    print()
    print(table)
    print("\ntargets (issue 6):")
    print(targets_text(results["targets"]))
    if target is not None:
        target.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
        print(f"\nwritten: {target}")
    else:
        print("\nreduced run: results not written (--results FILE keeps them)")
    total = results["total_wall_s"]
    print(f"total bench wall time: {total:.1f} s ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
