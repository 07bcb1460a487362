"""The API key goes into the Authorization header and nowhere else: not into results,
summaries, the usage log, stdout or stderr, whatever the gateway answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

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
    key_file.write_text(f"{api_key}\n")

    run = run_batchib(
        *run_args(sample("batch_api.jsonl"), gateway.url, "--api-key-file", str(key_file)),
        key=None,
    )

    assert run.status == 0, run.stderr
    assert {r.headers["authorization"] for r in gateway.requests} == {f"Bearer {api_key}"}
    assert_key_nowhere(api_key, run, tmp_path, exclude=key_file)


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
