"""Rate limits and faults: batchib against the simulator, judged from the server's log.

Scenarios (issue 3), each one run of the real CLI against `batchib simulate --log`:
1. limits known to both sides (--rpm/--tpm on client and server)
2. limits unknown to the client, rate-limit headers on
3. limits unknown to the client, headers off
4. faults: 10% 5xx, 3% dropped connections, 2% truncated bodies, 1% hangs
5. the key revoked after 100 requests, then a rerun with a valid key
Scenarios 1-4 also run the OpenAI SDK (AsyncOpenAI + semaphore, default retries) as a
baseline (bench/sdk_client.py). Prints a table and writes bench/results-limits.json.

    python bench/limits.py [--requests 2400] [--only 1,2,3,4,5] [--no-sdk]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import BATCHIB, ROOT, compile_package, start_logging_simulator, write_shorthand

RPM, TPM = 1200, 200_000
MODEL = "gpt-5.4-mini"
FAULTS = [
    "--fail-500",
    "0.04",
    "--fail-502",
    "0.03",
    "--fail-503",
    "0.03",
    "--drop",
    "0.03",
    "--truncate",
    "0.02",
    "--hang",
    "0.01",
    "--hang-s",
    "30",
]


class Simulator:
    def __init__(self, workdir: Path, name: str, args: Sequence[str]) -> None:
        self.process, self.url, self.log = start_logging_simulator(workdir, name, args)

    def stop(self) -> list[dict[str, Any]]:
        self.process.terminate()
        self.process.wait()
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


def write_input(path: Path, count: int) -> None:
    write_shorthand(
        path,
        count,
        prompt=lambda i: f"Question {i}: in two sentences, why does the sky look blue at noon?",
        max_tokens=100,
    )


def run_batchib(
    workdir: Path, name: str, url: str, key: str, extra: Sequence[str] = ()
) -> dict[str, Any]:
    output = workdir / f"{name}.out.jsonl"
    started = time.perf_counter()
    completed = subprocess.run(
        [
            *BATCHIB,
            "run",
            str(workdir / "input.jsonl"),
            "-o",
            str(output),
            "--model",
            MODEL,
            "--base-url",
            url,
            "-c",
            "64",
            "--no-progress",
            "-q",
            *extra,
        ],
        env={**os.environ, "BATCHIB_API_KEY": key},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    summary = json.loads(Path(f"{output}.summary.json").read_text())
    return {
        "exit": completed.returncode,
        "wall_s": wall,
        "records": records,
        "summary": summary,
        "stderr": completed.stderr,
    }


def run_sdk(workdir: Path, name: str, url: str, key: str, timeout_s: float) -> dict[str, Any]:
    output = workdir / f"{name}.sdk.jsonl"
    started = time.perf_counter()
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "sdk_client.py"),
            str(workdir / "input.jsonl"),
            str(output),
            url,
            MODEL,
            "64",
            str(timeout_s),
        ],
        env={**os.environ, "OPENAI_API_KEY": key},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if completed.returncode not in (0, 3):
        raise SystemExit(f"sdk client failed: {completed.stderr[-2000:]}")
    records = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    return {"exit": completed.returncode, "wall_s": wall, "records": records}


def server_figures(log: list[dict[str, Any]], limit_rpm: float | None) -> dict[str, Any]:
    """What the server saw: request rate, 429s, the busiest second."""
    if not log:
        return {}
    times = sorted(entry["t"] for entry in log)
    t0 = times[0]
    ok = sorted(e["t"] for e in log if e["status"] == 200 and not e.get("fault"))
    limited = sum(1 for e in log if e["status"] == 429)
    span = (ok[-1] - ok[0]) if len(ok) > 1 else 0.0
    after10 = [t for t in ok if t >= t0 + 10]
    span10 = (after10[-1] - after10[0]) if len(after10) > 1 else 0.0
    busiest, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < start + 1.0:
            j += 1
        busiest = max(busiest, j - i)
    figures: dict[str, Any] = {
        "received": len(log),
        "succeeded": len(ok),
        "rate_limited_429": limited,
        "rate_limited_share": round(limited / len(log), 4),
        "success_rate_per_min": round(len(ok) / span * 60, 1) if span else None,
        "success_rate_per_min_after_10s": round(len(after10) / span10 * 60, 1) if span10 else None,
        "busiest_second_received": busiest,
    }
    if limit_rpm:
        for key in ("success_rate_per_min", "success_rate_per_min_after_10s"):
            value = figures[key]
            figures[key.replace("per_min", "of_limit")] = (
                round(value / limit_rpm, 4) if value else None
            )
    return figures


def consistency(log: list[dict[str, Any]], result: dict[str, Any]) -> dict[str, Any]:
    """Output vs server log: each success written once, attempts counted."""
    records = result["records"]
    succeeded = [r for r in records if r["batchib"]["status"] == "succeeded"]
    ids = [r["custom_id"] for r in succeeded]
    served_ok = {e["body_sha256"] for e in log if e["status"] == 200 and not e.get("fault")}
    written_hashes = {r["batchib"]["body_hash"] for r in succeeded}
    summary = result["summary"]
    return {
        "output_lines": len(records),
        "successes_written": len(succeeded),
        "duplicate_successes": len(ids) - len(set(ids)),
        "successes_missing_from_server_log": len(written_hashes - served_ok),
        "summary_attempts": summary["attempts"],
        "server_received": len(log),
        "summary_retries": summary["retries"],
        "summary_succeeded": summary["counts"]["succeeded"],
    }


def sdk_figures(result: dict[str, Any]) -> dict[str, Any]:
    records = result["records"]
    ok = sum(1 for r in records if r["ok"])
    return {"succeeded": ok, "failed": len(records) - ok, "wall_s": round(result["wall_s"], 1)}


def scenario(number: int, workdir: Path, requests: int, with_sdk: bool) -> dict[str, Any]:
    limits = ["--rpm", str(RPM), "--tpm", str(TPM)]
    server_args = {
        1: limits,
        2: limits,
        3: [*limits, "--no-rate-headers"],
        4: ["--latency-ms", "20", *FAULTS],
        5: ["--latency-ms", "20", "--revoke-after", "100"],
    }[number]
    client_args = {
        1: limits,
        2: [],
        3: [],
        4: ["--max-attempts", "6", "--timeout", "2"],
        5: [],
    }[number]
    limit_rpm = RPM if number <= 3 else None
    out: dict[str, Any] = {"server": " ".join(server_args), "client": " ".join(client_args)}
    sim = Simulator(workdir, f"s{number}", server_args)
    try:
        result = run_batchib(workdir, f"s{number}", sim.url, "bench-key-one", client_args)
        if number == 5:
            first_401 = min(
                (
                    e["t"]
                    for e in json.loads("[" + ",".join(sim.log.read_text().splitlines()) + "]")
                    if e["status"] == 401
                ),
                default=None,
            )
            rerun = run_batchib(workdir, f"s{number}", sim.url, "bench-key-two", client_args)
    finally:
        log = sim.stop()
    out["batchib"] = {
        "exit": result["exit"],
        "wall_s": round(result["wall_s"], 1),
        **server_figures(log, limit_rpm),
        **consistency(log, result),
    }
    if number == 5:
        first_run = [e for e in log if e["key"] == _key_hash("bench-key-one")]
        second_run = [e for e in log if e["key"] == _key_hash("bench-key-two")]
        done_first = {e["body_sha256"] for e in first_run if e["status"] == 200}
        resent = sum(1 for e in second_run if e["body_sha256"] in done_first)
        last_first = max(e["t"] for e in first_run)
        out["batchib"].update(
            {
                "first_run_exit": result["exit"],
                "first_run_stop": result["summary"]["stop"],
                "seconds_from_first_401_to_last_request": round(last_first - first_401, 3)
                if first_401
                else None,
                "rerun_exit": rerun["exit"],
                "rerun_sent": len(second_run),
                "rerun_resent_already_succeeded": resent,
                "all_succeeded_after_rerun": len(
                    {
                        r["custom_id"]
                        for r in rerun["records"]
                        if r["batchib"]["status"] == "succeeded"
                    }
                )
                == requests,
            }
        )
    if with_sdk and number <= 4:
        sim = Simulator(workdir, f"s{number}-sdk", server_args)
        try:
            sdk = run_sdk(
                workdir, f"s{number}", sim.url, "bench-key-sdk", 2.0 if number == 4 else 600.0
            )
        finally:
            log = sim.stop()
        out["openai_sdk"] = {**sdk_figures(sdk), **server_figures(log, limit_rpm)}
    return out


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2400)
    parser.add_argument("--only", default="1,2,3,4,5")
    parser.add_argument("--no-sdk", action="store_true")
    args = parser.parse_args()
    compile_package()
    out = ROOT / "bench" / "results-limits.json"
    # Scenarios run with --only are merged into the previous results of the same size.
    previous = json.loads(out.read_text()) if out.exists() else {}
    results: dict[str, Any] = {
        "machine": (
            f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "date": time.strftime("%Y-%m-%d"),
        "requests": args.requests,
        "limits": {"rpm": RPM, "tpm": TPM},
        "scenarios": previous.get("scenarios", {})
        if previous.get("requests") == args.requests
        else {},
    }
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        write_input(workdir / "input.jsonl", args.requests)
        for number in (int(n) for n in args.only.split(",")):
            print(f"scenario {number} ...", flush=True)
            earlier = results["scenarios"].get(str(number), {})
            results["scenarios"][str(number)] = scenario(
                number, workdir, args.requests, not args.no_sdk
            )
            if args.no_sdk and "openai_sdk" in earlier:
                # --no-sdk reruns batchib alone: the SDK's earlier figures stay, dated.
                results["scenarios"][str(number)]["openai_sdk"] = earlier["openai_sdk"]
                results["scenarios"][str(number)]["openai_sdk_measured"] = earlier.get(
                    "openai_sdk_measured", previous.get("date")
                )
            print(json.dumps(results["scenarios"][str(number)], indent=1), flush=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
