"""The baseline a typical user writes: the OpenAI SDK, AsyncOpenAI + a semaphore, its
default retries. Reads shorthand JSONL; writes one line per request (custom_id, ok) and
prints the totals as one JSON line (successes, failures, tokens from each reply's usage).

    python bench/sdk_client.py INPUT OUTPUT BASE_URL MODEL CONCURRENCY TIMEOUT_S
"""

from __future__ import annotations

import asyncio
import json
import sys

import openai


async def main() -> int:
    source, target, base_url, model, concurrency, timeout_s = sys.argv[1:7]
    client = openai.AsyncOpenAI(base_url=base_url, timeout=float(timeout_s))
    semaphore = asyncio.Semaphore(int(concurrency))
    with open(source) as stream:  # noqa: ASYNC230 - read whole before the loop's work
        lines = [json.loads(line) for line in stream if line.strip()]
    results: list[dict[str, object]] = []
    tokens = {"prompt_tokens": 0, "completion_tokens": 0}

    async def one(line: dict[str, object]) -> None:
        async with semaphore:
            try:
                completion = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": str(line["prompt"])}],
                    max_tokens=int(str(line.get("max_tokens", 100))),
                )
                if completion.usage is not None:
                    tokens["prompt_tokens"] += completion.usage.prompt_tokens
                    tokens["completion_tokens"] += completion.usage.completion_tokens
                results.append({"custom_id": line["id"], "ok": True})
            except openai.APIError as exc:
                results.append({"custom_id": line["id"], "ok": False, "error": type(exc).__name__})
            except ValueError as exc:
                # A truncated 200 body escapes the SDK as json.JSONDecodeError, not as an
                # APIError: a script catching APIError alone loses the whole batch here.
                results.append({"custom_id": line["id"], "ok": False, "error": type(exc).__name__})

    await asyncio.gather(*(one(line) for line in lines))
    with open(target, "w") as stream:  # noqa: ASYNC230 - after the work
        for result in results:
            stream.write(json.dumps(result) + "\n")
    succeeded = sum(1 for r in results if r["ok"])
    totals = {"succeeded": succeeded, "failed": len(results) - succeeded, **tokens}
    print(json.dumps(totals), flush=True)
    return 0 if all(r["ok"] for r in results) else 3


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
