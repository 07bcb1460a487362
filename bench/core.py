"""Core figures for batchib: throughput against the simulator and memory vs input size.

Runs the real CLI as a user does (a subprocess), against `batchib simulate` in another
process on loopback, and reads each child's own rusage (os.wait4), so the client's peak
RSS and CPU are its own. Prints a table and writes bench/results-core.json.

    python bench/core.py [--requests 2000] [--latency-ms 10] [--concurrency 64]
                         [--rss-lines 20000,200000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCHIB = [sys.executable, "-m", "batchib"]


def start_simulator(workdir: Path, latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    url_file = workdir / f"sim-{latency_ms}.url"
    process = subprocess.Popen(
        [
            *BATCHIB,
            "simulate",
            "--port",
            "0",
            "--port-file",
            str(url_file),
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not url_file.exists():  # a benchmark script, not product code
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("the simulator did not start")
        time.sleep(0.05)
    return process, url_file.read_text().strip()


def write_input(path: Path, lines: int) -> None:
    with open(path, "w") as stream:
        for i in range(lines):
            stream.write(
                json.dumps(
                    {
                        "id": f"r{i}",
                        "prompt": f"Question number {i}: why is the sky blue?",
                        "max_tokens": 16,
                    }
                )
                + "\n"
            )


def run_client(input_path: Path, output: Path, url: str, concurrency: int) -> dict[str, float]:
    env = {**os.environ, "BATCHIB_API_KEY": "bench-key-not-secret"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            *BATCHIB,
            "run",
            str(input_path),
            "-o",
            str(output),
            "--overwrite",
            "--model",
            "gpt-5.4-mini",
            "--base-url",
            url,
            "-c",
            str(concurrency),
            "-q",
            "--no-progress",
        ],
        env=env,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"batchib run exited with {os.waitstatus_to_exitcode(status)}")
    summary = json.loads(Path(f"{output}.summary.json").read_text())
    succeeded = summary["counts"]["succeeded"]
    lines = sum(1 for _ in open(output, "rb"))
    if succeeded != lines:
        raise SystemExit(f"{succeeded} successes but {lines} output lines")
    return {
        "requests": succeeded,
        "wall_s": round(wall, 3),
        "requests_per_s_run": summary["throughput"]["requests_per_s"],
        "requests_per_s_process": round(succeeded / wall, 1),
        "cpu_ms_per_request": round((usage.ru_utime + usage.ru_stime) * 1000 / succeeded, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rss-lines", default="20000,200000")
    args = parser.parse_args()
    results: dict[str, object] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        sim, url = start_simulator(workdir, args.latency_ms)
        try:
            path = workdir / "throughput.jsonl"
            write_input(path, args.requests)
            cell = run_client(path, workdir / "out.jsonl", url, args.concurrency)
            ceiling = args.concurrency / (args.latency_ms / 1000) if args.latency_ms else None
            cell["ceiling_requests_per_s"] = ceiling or 0
            results["throughput"] = {
                "latency_ms": args.latency_ms,
                "concurrency": args.concurrency,
                **cell,
            }
        finally:
            sim.terminate()
            sim.wait()
        sim, url = start_simulator(workdir, 0.0)
        try:
            rss = {}
            for lines in (int(n) for n in args.rss_lines.split(",")):
                path = workdir / f"rss-{lines}.jsonl"
                write_input(path, lines)
                rss[str(lines)] = run_client(
                    path, workdir / f"rss-{lines}.out", url, args.concurrency
                )
            results["memory"] = rss
        finally:
            sim.terminate()
            sim.wait()
    out = ROOT / "bench" / "results-core.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    t = results["throughput"]
    print(f"machine: {results['machine']}")
    print(
        f"throughput: {t['requests']} requests, latency {t['latency_ms']} ms, -c {t['concurrency']}: "
        f"{t['requests_per_s_process']} req/s (process wall), {t['requests_per_s_run']} req/s "
        f"(run), ceiling {t['ceiling_requests_per_s']:.0f}; {t['cpu_ms_per_request']} CPU ms/req"
    )
    for lines, cell in results["memory"].items():
        print(
            f"memory: {lines:>8} lines: peak RSS {cell['peak_rss_mb']} MB, "
            f"{cell['requests_per_s_process']} req/s, {cell['cpu_ms_per_request']} CPU ms/req"
        )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
