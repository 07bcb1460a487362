"""Hundreds of malformed and hostile lines: each is reported with its line number, the
good lines around them succeed, and nothing crashes the run."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CliRun, RecordingGateway

GOOD = b'{"id": "good-%d", "prompt": "fine line %d"}'


def hostile_lines(rng: random.Random) -> list[bytes]:
    lines = [
        b"[" * 100_000 + b"]" * 100_000,  # nesting far past any parser's limit
        b'{"prompt": "' + b"\xff\xfe" * 10 + b'"}',  # invalid UTF-8
        b'{"prompt": "a\x00b"}',  # a raw NUL inside a string
        b'{"prompt"\x00: "x"}',  # a NUL between tokens
        b'{"prompt": "x", "seed": 1' + b"0" * 30 + b"}",  # integer beyond 64 bits
        b'{"prompt": "x", "temperature": 1e999}',  # float out of range
        b'{"prompt": "x", "n": -99999999999999999999999}',
        b"\xef\xbb\xbf" + b'{"prompt": "BOM in the middle of a file"}',
        b'{"prompt": "unterminated ' + b"y" * (50 * 1024 * 1024),  # a 50 MB broken line
        b"null",
        b'"just a string"',
        b"12345",
        b"{}",
        b'{"messages": "not a list", "model": "m"}',
        b'{"messages": [{"role": "robot", "content": "x"}], "model": "m"}',
        b'{"messages": [{"role": "user"}], "model": "m"}',
        b'{"custom_id": 5.5, "prompt": "x"}',
        b'{"prompt": "x", "n": 1000}',
        b'{"prompt": "x", "max_tokens": true}',
        b'{"body": [], "custom_id": "b"}',
        b'{"url": "/v1/embeddings", "body": {}, "custom_id": "e"}',
        b'{"prompt": "x", "stream": true}',
        b'{"prompt": ' + b'"z' * 5 + b"}",
    ]
    # Random bytes and random truncations of a valid line, with a fixed seed.
    template = json.dumps({"id": "t", "prompt": "p", "max_tokens": 5}).encode()
    for _ in range(150):
        lines.append(
            bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 80)))
            .replace(b"\n", b" ")
            .replace(b"\r", b" ")
        )
        cut = rng.randrange(1, len(template) - 1)
        lines.append(template[:cut])
    return lines


def test_every_hostile_line_is_reported_and_the_good_ones_succeed(
    tmp_path: Path,
    run_batchib: Callable[..., CliRun],
    start_recording_simulator: Callable[..., RecordingGateway],
) -> None:
    gateway = start_recording_simulator()
    rng = random.Random(20261129)
    hostile = [line for line in hostile_lines(rng) if line.strip()]
    content: list[bytes] = []
    good_lines: dict[int, str] = {}
    hostile_numbers: set[int] = set()
    for i, line in enumerate(hostile):
        content.append(GOOD % (i, i))
        good_lines[len(content)] = f"good-{i}"
        content.append(line)
        hostile_numbers.add(len(content))
    source = tmp_path / "hostile.jsonl"
    source.write_bytes(b"\r\n".join(content) + b"\r\n")  # CRLF endings throughout

    run = run_batchib(source, "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", gateway.url)

    assert run.status == 3, run.stderr[-2000:]
    records = run.records()
    by_line = {r["batchib"]["line"]: r for r in records}
    assert set(by_line) == set(good_lines) | hostile_numbers
    for number, custom_id in good_lines.items():
        assert by_line[number]["custom_id"] == custom_id
        assert by_line[number]["batchib"]["status"] == "succeeded", by_line[number]
    for number in hostile_numbers:
        record = by_line[number]
        # Random bytes can make a valid line by chance; everything else is reported.
        if record["batchib"]["status"] == "invalid":
            assert record["error"]["message"].startswith(f"{source}:{number}: ")
    invalid = sum(1 for n in hostile_numbers if by_line[n]["batchib"]["status"] == "invalid")
    assert invalid >= len(hostile_numbers) - 5
    # The 50 MB line was reported, not copied into the output.
    assert (tmp_path / "out.jsonl").stat().st_size < 5 * 1024 * 1024
