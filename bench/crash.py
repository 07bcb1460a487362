"""Kill batchib with SIGKILL (or SIGTERM) at random moments, resume until complete, and
judge from the simulator's request log what was sent twice.

    python bench/crash.py [--kills 20] [--requests 2000] [--signal KILL|TERM] [--seed 1]

Each round starts `batchib run` on the same output and kills it after a random
1.5-4.5 s; the last round runs to completion. After every kill the output is read: any
request whose success was already written must never reach the server again. Requests
in flight at a SIGKILL may be sent again (they were answered but not written); with
SIGTERM nothing at all may be. Writes bench/results-crash-<signal>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import BATCHIB, ROOT, compile_package, start_logging_simulator, write_shorthand


def start_simulator(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    return start_logging_simulator(
        workdir,
        "server",
        [
            *("--latency-ms", "50", "--fail-500", "0.02", "--fail-503", "0.02"),
            *("--drop", "0.01", "--seed", "7"),
        ],
        stderr=subprocess.DEVNULL,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def run_trial(
    trial: int,
    workdir: Path,
    url: str,
    log: Path,
    requests: int,
    signum: int,
    rng: random.Random,
) -> dict[str, Any]:
    """One trial: a fresh output, one run killed at a random moment, one resume."""
    source = workdir / f"in-{trial}.jsonl"
    write_shorthand(source, requests, prompt=lambda i: f"trial {trial} question {i}", max_tokens=20)
    output = workdir / f"out-{trial}.jsonl"
    env = {**os.environ, "BATCHIB_API_KEY": "crash-bench-key"}
    command = [
        *BATCHIB,
        "run",
        str(source),
        "-o",
        str(output),
        "--model",
        "gpt-5.4",
        "--base-url",
        url,
        "-c",
        "32",
        "-q",
        "--no-progress",
        "--grace",
        "5",
    ]

    def mine(since: float) -> list[dict[str, Any]]:
        # This trial's requests (their prompts are unique to it) that arrived since.
        return [e for e in read_jsonl(log) if e["t"] >= since and e["body_sha256"] in hashes]

    started = time.time()
    first = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        # Start-up (imports, the tokenizer) takes about 1.5 s, the whole run about 5 s.
        first.wait(timeout=rng.uniform(1.5, 4.5))
    except subprocess.TimeoutExpired:
        first.send_signal(signum)
    first.wait()
    killed_at = time.time()
    written = {
        r["batchib"]["body_hash"]
        for r in read_jsonl_tolerant(output)
        if r.get("batchib", {}).get("status") == "succeeded"
    }
    hashes = {r["batchib"]["body_hash"] for r in read_jsonl_tolerant(output)} | _hashes(source)
    resume_started = time.time()
    second = subprocess.run(command, env=env, stderr=subprocess.PIPE, check=False)
    if second.returncode != 0:
        raise SystemExit(f"resume failed: {second.stderr.decode()[-2000:]}")
    before_kill = [e for e in mine(started) if e["t"] < killed_at]
    after = mine(resume_started)
    ok_before = {e["body_sha256"] for e in before_kill if e["status"] == 200}
    resent_written = sum(1 for e in after if e["body_sha256"] in written)
    resent_in_flight = sum(
        1 for e in after if e["body_sha256"] in ok_before and e["body_sha256"] not in written
    )
    subprocess.run([*BATCHIB, "compact", str(output)], check=True, stderr=subprocess.DEVNULL)
    records = read_jsonl(output)
    ids = sorted(r["custom_id"] for r in records)
    return {
        "trial": trial,
        "first_exit": first.returncode,
        "written_before_resume": len(written),
        "resent_after_written": resent_written,
        "resent_in_flight_successes": resent_in_flight,
        "seconds_resume_to_first_request": round(min(e["t"] for e in after) - resume_started, 3)
        if after
        else None,
        "complete_once": ids == sorted(f"r{i}" for i in range(requests))
        and all(r["batchib"]["status"] == "succeeded" for r in records),
    }


def read_jsonl_tolerant(path: Path) -> list[dict[str, Any]]:
    """Whole records only: a torn last line is not a record."""
    out = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _hashes(source: Path) -> set[str]:
    """The body hashes batchib computes for this input (it sends exactly those bytes)."""
    from batchib.config import RequestDefaults
    from batchib.inputs import Request, parse_line

    defaults = RequestDefaults(model="gpt-5.4")
    found = set()
    for number, raw in enumerate(source.read_bytes().splitlines(), 1):
        item = parse_line(raw, str(source), number, defaults)
        if isinstance(item, Request):
            found.add(item.body_hash)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    compile_package()
    rng = random.Random(args.seed)
    signum = signal.SIGKILL if args.signal == "KILL" else signal.SIGTERM
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        sim, url, log = start_simulator(workdir)
        try:
            for trial in range(args.kills):
                trials.append(run_trial(trial, workdir, url, log, args.requests, signum, rng))
                print(json.dumps(trials[-1]), flush=True)
        finally:
            sim.terminate()
            sim.wait()
    resume_times = [t["seconds_resume_to_first_request"] for t in trials]
    result = {
        "signal": args.signal,
        "trials": len(trials),
        "requests_per_trial": args.requests,
        "all_complete_once": all(t["complete_once"] for t in trials),
        "killed_mid_run": sum(1 for t in trials if t["first_exit"] != 0),
        "resent_after_written_total": sum(t["resent_after_written"] for t in trials),
        "resent_in_flight_successes_total": sum(t["resent_in_flight_successes"] for t in trials),
        "resent_in_flight_successes_max": max(t["resent_in_flight_successes"] for t in trials),
        "median_seconds_resume_to_first_request": _median([t for t in resume_times if t]),
        "trials_detail": trials,
    }
    out = ROOT / "bench" / f"results-crash-{args.signal.lower()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "trials_detail"}, indent=1))


if __name__ == "__main__":
    main()
