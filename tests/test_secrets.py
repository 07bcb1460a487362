"""The API key goes into the Authorization header and nowhere else: not into results,
summaries, the usage log, stdout or stderr, whatever the gateway answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from batchib.client import Scrubber
from batchib.config import ApiKey, Job, RunSettings
from batchib.simulator import SimulatorSettings

MODEL = "gpt-5.4-mini"


def files_containing(root: Path, secret: str, *, exclude: Path | None = None) -> list[Path]:
    needle = secret.encode()
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file() and path != exclude and needle in path.read_bytes()
    ]


def assert_key_nowhere(key: str, run, root: Path, *, exclude: Path | None = None) -> None:
    assert key not in run.stdout
    assert key not in run.stderr
    assert files_containing(root, key, exclude=exclude) == []


def run_args(source: Path, url: str, *extra: str) -> tuple[str | Path, ...]:
    return (
        source,
        "-o",
        "out.jsonl",
        "--model",
        MODEL,
        "--base-url",
        url,
        "--usage-log",
        "usage.jsonl",
        *extra,
    )


def test_key_is_not_written_by_a_successful_run(
    sample, run_batchib, start_recording_simulator, api_key, tmp_path
):
    gateway = start_recording_simulator()

    run = run_batchib(*run_args(sample("batch_api.jsonl"), gateway.url))

    assert run.status == 0, run.stderr
    assert {r.headers["authorization"] for r in gateway.requests} == {f"Bearer {api_key}"}
    assert all(api_key.encode() not in r.body for r in gateway.requests)
    assert (tmp_path / "usage.jsonl").exists()
    assert_key_nowhere(api_key, run, tmp_path)


def test_key_is_not_written_when_the_gateway_rejects_it(
    sample, run_batchib, start_simulator, api_key, tmp_path
):
    url = start_simulator(SimulatorSettings(require_key="sk-another-key-0000000000"))

    run = run_batchib(*run_args(sample("prompts.jsonl"), url))

    assert run.status == 1
    assert "rejected the API key" in run.stderr
    assert_key_nowhere(api_key, run, tmp_path)


def test_key_is_not_written_when_the_gateway_is_unreachable(
    sample, run_batchib, closed_port_url, api_key, tmp_path
):
    run = run_batchib(*run_args(sample("batch_api.jsonl"), closed_port_url, "--max-attempts", "1"))

    assert run.status == 3, run.stderr
    records = run.records()
    assert records
    assert {r["error"]["code"] for r in records} == {"connection_error"}
    assert_key_nowhere(api_key, run, tmp_path)


def test_key_file_is_used_and_its_content_never_written(
    sample, run_batchib, start_recording_simulator, api_key, tmp_path
):
    gateway = start_recording_simulator()
    key_file = tmp_path / "key.txt"
    key_file.write_bytes(f"\ufeff{api_key}\r\n".encode())  # as Notepad saves it

    run = run_batchib(
        *run_args(sample("batch_api.jsonl"), gateway.url, "--api-key-file", str(key_file)),
        key=None,
    )

    assert run.status == 0, run.stderr
    assert {r.headers["authorization"] for r in gateway.requests} == {f"Bearer {api_key}"}
    assert_key_nowhere(api_key, run, tmp_path, exclude=key_file)


@pytest.mark.parametrize("bad", ["\x01", "\x7f", "\u00e9", "\ufeff"])
def test_a_key_no_header_can_carry_is_refused_before_anything_starts(
    bad, sample, run_batchib, closed_port_url, api_key, tmp_path
):
    key = f"{api_key[:10]}{bad}{api_key[10:]}"

    run = run_batchib(*run_args(sample("batch_api.jsonl"), closed_port_url), key=key)

    assert run.status == 1
    assert "at position 11" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.jsonl").exists()
    assert_key_nowhere(api_key[10:], run, tmp_path)


def test_a_key_file_that_is_not_utf8_is_refused_without_a_traceback(
    sample, run_batchib, closed_port_url, api_key, tmp_path
):
    key_file = tmp_path / "key.txt"
    key_file.write_bytes(api_key.encode("utf-16"))

    run = run_batchib(
        *run_args(sample("batch_api.jsonl"), closed_port_url, "--api-key-file", str(key_file)),
        key=None,
    )

    assert run.status == 1
    assert f"cannot read the API key file {key_file}: not UTF-8 text" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_key_file_wins_over_the_environment(
    sample, run_batchib, start_recording_simulator, api_key, tmp_path
):
    gateway = start_recording_simulator()
    key_file = tmp_path / "key.txt"
    key_file.write_text(api_key)

    run = run_batchib(
        *run_args(sample("batch_api.jsonl"), gateway.url, "--api-key-file", str(key_file)),
        key="sk-from-the-environment-000000",
    )

    assert run.status == 0, run.stderr
    assert {r.headers["authorization"] for r in gateway.requests} == {f"Bearer {api_key}"}


def echoing_gateway(status: int) -> web.Application:
    """A careless gateway that quotes the bearer key back in its error message."""

    async def reject(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.json_response(
            {
                "error": {
                    "message": f"Key {key} is not valid for this request.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "bad_key_echoed",
                }
            },
            status=status,
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", reject)
    return app


def test_key_echoed_in_a_request_error_is_redacted_from_the_results(
    sample, run_batchib, start_app, api_key, tmp_path
):
    url = start_app(echoing_gateway(400))

    run = run_batchib(*run_args(sample("batch_api.jsonl"), url))

    assert run.status == 3, run.stderr
    messages = {r["response"]["body"]["error"]["message"] for r in run.records()}
    assert messages == {"Key [REDACTED] is not valid for this request."}
    assert_key_nowhere(api_key, run, tmp_path)


def test_key_echoed_in_a_rejection_is_kept_out_of_summary_and_stderr(
    sample, run_batchib, start_app, api_key, tmp_path
):
    url = start_app(echoing_gateway(401))

    run = run_batchib(*run_args(sample("batch_api.jsonl"), url))

    assert run.status == 1, run.stderr
    assert_key_nowhere(api_key, run, tmp_path)


def escaping_gateway(status: int) -> web.Application:
    """A gateway that writes the key back JSON-escaped (every other character as \\uXXXX,
    as json_encode escapes `/`) in its body, and plainly in its request id header."""

    async def answer(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        escaped = "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(key))
        if status == 200:
            text = (
                '{"id": "chatcmpl-1", "object": "chat.completion", "created": 1, '
                f'"model": "{MODEL}", "choices": [{{"index": 0, "finish_reason": "stop", '
                f'"message": {{"role": "assistant", "content": "You sent {escaped}"}}}}], '
                f'"usage": {{"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}, '
                f'"echo": {{"{escaped}": ["{escaped}"]}}}}'
            )
        else:
            text = f'{{"error": {{"message": "Key {escaped} is not valid", "code": "echoed"}}}}'
        return web.Response(
            text=text,
            status=status,
            content_type="application/json",
            headers={"x-request-id": f"req_{key}"},
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    return app


@pytest.mark.parametrize(("status", "exit_status"), [(200, 0), (400, 3), (401, 1)])
def test_key_echoed_json_escaped_or_in_the_request_id_is_redacted(
    status, exit_status, sample, run_batchib, start_app, api_key, tmp_path
):
    url = start_app(escaping_gateway(status))

    run = run_batchib(*run_args(sample("batch_api.jsonl"), url, "--log-format", "json"))

    assert run.status == exit_status, run.stderr
    records = run.records()
    assert records
    assert {r["response"]["request_id"] for r in records} == {"req_[REDACTED]"}
    if status == 200:
        body = records[0]["response"]["body"]
        assert body["choices"][0]["message"]["content"] == "You sent [REDACTED]"
        assert body["echo"] == {"[REDACTED]": ["[REDACTED]"]}
    else:
        assert records[0]["response"]["body"]["error"]["message"] == "Key [REDACTED] is not valid"
    assert_key_nowhere(api_key, run, tmp_path)


@pytest.mark.parametrize(
    "show",
    [repr, str, "{}".format, "{!r}".format, lambda key: f"{key}"],
    ids=["repr", "str", "format", "format-repr", "f-string"],
)
def test_api_key_never_shows_itself(show, api_key):
    assert api_key not in show(ApiKey(api_key))
    assert ApiKey(f"  {api_key}\n").reveal() == api_key


def test_settings_and_job_reprs_hide_the_key(api_key, tmp_path):
    settings = RunSettings(api_key=ApiKey(api_key), base_url="http://127.0.0.1:9/v1")
    job = Job(inputs=("in.jsonl",), output=tmp_path / "out.jsonl", settings=settings)

    assert api_key not in repr(settings)
    assert api_key not in repr(job)


def test_key_is_not_written_by_json_logs_manifest_lock_compact_or_config_dump(
    sample, run_batchib, start_recording_simulator, api_key, tmp_path
):
    gateway = start_recording_simulator()
    source = sample("batch_api.jsonl")

    run = run_batchib(
        *run_args(source, gateway.url, "--log-format", "json", "--log-every", "0.01", "--compact")
    )
    dump = run_batchib(*run_args(source, gateway.url, "--print-config"))

    assert run.status == 0, run.stderr
    assert dump.status == 0, dump.stderr
    assert (tmp_path / "out.jsonl.manifest.json").exists()
    assert (tmp_path / "out.jsonl.lock").exists()
    assert_key_nowhere(api_key, run, tmp_path)
    assert_key_nowhere(api_key, dump, tmp_path)


KEY = "AbC/dEf+SECRETCANARY123=="


WITHHELD = "(an answer nested too deeply to check for the key: withheld)"
DEEP = b"[" * 300 + b'"\\/"' + b"]" * 300


@pytest.mark.parametrize(
    ("raw", "body", "text"),
    [
        pytest.param(
            b'"invalid key AbC\\/dEf+SECRETCANARY123=="',
            None,
            '"invalid key [REDACTED]"',
            id="json-string",
        ),
        pytest.param(
            b'["\\u0041bC/dEf+SECRETCANARY123=="]', None, '["[REDACTED]"]', id="json-array"
        ),
        pytest.param(DEEP, None, WITHHELD, id="too-deep-to-check"),
        pytest.param(b'{"a": "x\\ny"}', {"a": "x\ny"}, "", id="escapes-that-cannot-hide-it"),
        pytest.param(
            b"<html>AbC/dEf+SECRETCANARY123==</html>", None, "<html>[REDACTED]</html>", id="html"
        ),
    ],
)
def test_scrubber_finds_the_key_however_an_answer_holds_it(
    raw: bytes, body: dict[str, str] | None, text: str
) -> None:
    scrub = Scrubber(KEY)

    assert scrub.answer(scrub.raw(raw)) == (body, text)
