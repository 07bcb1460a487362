"""Kill batchib with SIGKILL (or SIGTERM) at random moments, resume until complete, and
judge from the simulator's request log what was sent twice.

    python bench/crash.py [--kills 20] [--requests 2000] [--signal KILL|TERM] [--seed 1]

Each round starts `batchib run` on the same output and kills it after a random
0.3-3 s; the last round runs to completion. After every kill the output is read: any
request whose success was already written must never reach the server again. Requests
in flight at a SIGKILL may be sent again (they were answered but not written); with
SIGTERM nothing at all may be. Writes bench/results-crash-<signal>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCHIB = [sys.executable, "-m", "batchib"]


def start_simulator(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    log = workdir / "server.jsonl"
    url_file = workdir / "url"
    process = subprocess.Popen(
        [
            *BATCHIB,
            "simulate",
            "--port",
            "0",
            "--port-file",
            str(url_file),
            "--log",
            str(log),
            "--latency-ms",
            "50",
            "--fail-500",
            "0.02",
            "--fail-503",
            "0.02",
            "--drop",
            "0.01",
            "--seed",
            "7",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not url_file.exists():  # a benchmark waiting for its child
        if time.monotonic() > deadline:
            raise SystemExit("the simulator did not start")
        time.sleep(0.05)
    return process, url_file.read_text().strip(), log


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    signum = signal.SIGKILL if args.signal == "KILL" else signal.SIGTERM
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        source = workdir / "in.jsonl"
        source.write_text(
            "".join(
                json.dumps({"id": f"r{i}", "prompt": f"question {i}", "max_tokens": 20}) + "\n"
                for i in range(args.requests)
            )
        )
        output = workdir / "out.jsonl"
        sim, url, log = start_simulator(workdir)
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
        resent_after_written = 0
        try:
            for round_number in range(args.kills + 1):
                written_before = {
                    r["batchib"]["body_hash"]
                    for r in read_jsonl(output)
                    if r.get("batchib", {}).get("status") == "succeeded"
                }
                log_before = len(read_jsonl(log))
                started = time.time()
                process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
                killed = round_number < args.kills
                if killed:
                    try:
                        process.wait(timeout=rng.uniform(0.3, 3.0))
                    except subprocess.TimeoutExpired:
                        process.send_signal(signum)
                _, stderr = process.communicate()
                entries = read_jsonl(log)[log_before:]
                resent = sum(1 for e in entries if e["body_sha256"] in written_before)
                resent_after_written += resent
                first = min((e["t"] for e in entries), default=None)
                rounds.append(
                    {
                        "round": round_number,
                        "killed": killed and process.returncode != 0,
                        "exit": process.returncode,
                        "sent": len(entries),
                        "resent_already_written": resent,
                        "seconds_to_first_request": round(first - started, 3) if first else None,
                    }
                )
                if not killed and process.returncode != 0:
                    raise SystemExit(f"final run failed: {stderr.decode()[-2000:]}")
        finally:
            sim.terminate()
            sim.wait()
        subprocess.run([*BATCHIB, "compact", str(output)], check=True)
        records = read_jsonl(output)
        server = read_jsonl(log)
    ids = [r["custom_id"] for r in records]
    ok_by_hash: dict[str, int] = {}
    for entry in server:
        if entry["status"] == 200:
            ok_by_hash[entry["body_sha256"]] = ok_by_hash.get(entry["body_sha256"], 0) + 1
    duplicates = sum(count - 1 for count in ok_by_hash.values())
    result = {
        "signal": args.signal,
        "kills": args.kills,
        "requests": args.requests,
        "all_succeeded_once": sorted(ids) == sorted(f"r{i}" for i in range(args.requests))
        and all(r["batchib"]["status"] == "succeeded" for r in records),
        "resent_after_success_written": resent_after_written,
        "duplicate_successful_sends": duplicates,
        "server_requests": len(server),
        "median_seconds_to_first_request": sorted(
            r["seconds_to_first_request"] for r in rounds if r["seconds_to_first_request"]
        )[len(rounds) // 2]
        if rounds
        else None,
        "rounds": rounds,
    }
    out = ROOT / "bench" / f"results-crash-{args.signal.lower()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))


if __name__ == "__main__":
    main()
