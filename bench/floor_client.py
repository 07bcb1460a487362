"""The floor: the least a client can do for a batch, a bare aiohttp loop.

One session, N workers on a queue, orjson, one output line per request (the response
body under its custom_id), usage summed. No limits, retries, resume or durability: what
batchib adds on top of this is what the benchmark prices.

    python bench/floor_client.py INPUT OUTPUT BASE_URL MODEL CONCURRENCY [uvloop]

On asyncio's loop, or uvloop's with the last argument. Prints one JSON line:
{"succeeded": ..., "failed": ..., "prompt_tokens": ..., ...}.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import orjson


async def main() -> int:
    source, target, base_url, model, concurrency = sys.argv[1:6]
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer bench-key-not-secret", "Content-Type": "application/json"}
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4 * int(concurrency))
    totals = {"succeeded": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
    output = open(target, "wb")  # noqa: SIM115, ASYNC230 - closed after the workers

    async def worker(session: aiohttp.ClientSession) -> None:
        while (line := await queue.get()) is not None:
            item = orjson.loads(line)
            body = orjson.dumps(
                {
                    "model": model,
                    "messages": [{"role": "user", "content": item["prompt"]}],
                    "max_tokens": item.get("max_tokens", 100),
                }
            )
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    payload = await response.read()
                    status = response.status
                answer = orjson.loads(payload)
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                totals["failed"] += 1
                continue
            if status != 200:
                totals["failed"] += 1
                continue
            usage = answer.get("usage") or {}
            totals["succeeded"] += 1
            totals["prompt_tokens"] += usage.get("prompt_tokens", 0)
            totals["completion_tokens"] += usage.get("completion_tokens", 0)
            output.write(
                orjson.dumps({"custom_id": item["id"], "status_code": status, "body": answer})
                + b"\n"
            )

    connector = aiohttp.TCPConnector(limit=int(concurrency))
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(int(concurrency))]
        with open(source, "rb") as stream:  # noqa: ASYNC230 - a benchmark's local file
            for line in stream:
                if line.strip():
                    await queue.put(line)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    output.close()
    print(orjson.dumps(totals).decode(), flush=True)
    return 0 if totals["failed"] == 0 else 3


if __name__ == "__main__":
    if sys.argv[6:7] == ["uvloop"]:
        import uvloop

        sys.exit(uvloop.run(main()))
    sys.exit(asyncio.run(main()))
