"""Resume: a rerun of the same command sends only what has no successful result yet."""

from __future__ import annotations

import json
from pathlib import Path

from batchib.simulator import SimulatorSettings
from batchib.simulator.settings import DEFAULT_MODELS

MODEL = "gpt-5.4-mini"
SAMPLE_FILES = ("prompts.jsonl", "chat_bodies.jsonl", "batch_api.jsonl")


def user_prompts(bodies: list[dict]) -> set[str]:
    return {body["messages"][-1]["content"] for body in bodies}


def append_lines(path: Path, *objects: dict) -> None:
    with path.open("a") as stream:
        for obj in objects:
            stream.write(json.dumps(obj) + "\n")


def test_rerun_of_a_finished_job_sends_nothing(sample, run_batchib, start_recording_simulator):
    gateway = start_recording_simulator()
    inputs = [sample(name) for name in SAMPLE_FILES]
    args = (*inputs, "-o", "out.jsonl", "--model", MODEL, "--base-url", gateway.url)
    first = run_batchib(*args)
    assert first.status == 0, first.stderr
    count = len(first.records())
    gateway.clear()

    rerun = run_batchib(*args)

    assert rerun.status == 0, rerun.stderr
    assert gateway.requests == []
    summary = rerun.summary()
    assert summary["counts"]["skipped_already_done"] == count
    assert summary["counts"]["sent"] == 0
    assert summary["resume"] == {"previously_done": count, "unreadable_lines": 0}
    assert len(rerun.records()) == count


def test_rerun_sends_only_an_edited_line_and_a_new_line(
    sample, run_batchib, start_recording_simulator
):
    gateway = start_recording_simulator()
    source = sample("prompts.jsonl")
    args = (source, "-o", "out.jsonl", "--model", MODEL, "--base-url", gateway.url)
    assert run_batchib(*args).status == 0
    gateway.clear()
    lines = source.read_text().splitlines()
    edited = json.loads(lines[4])
    edited["prompt"] = "An edited prompt, same id."
    lines[4] = json.dumps(edited)
    source.write_text("\n".join(lines) + "\n")
    append_lines(source, {"id": "prompt-new", "prompt": "A line added after the first run."})

    rerun = run_batchib(*args)

    assert rerun.status == 0, rerun.stderr
    assert user_prompts(gateway.bodies()) == {
        "An edited prompt, same id.",
        "A line added after the first run.",
    }
    assert len(gateway.requests) == 2
    assert rerun.summary()["counts"]["skipped_already_done"] == len(lines) - 1
    new_records = rerun.records()[len(lines) :]
    assert {r["custom_id"] for r in new_records} == {edited["id"], "prompt-new"}


def test_failed_requests_are_sent_again_on_rerun(tmp_path, run_batchib, start_recording_simulator):
    source = tmp_path / "in.jsonl"
    append_lines(
        source,
        {"id": "good-1", "prompt": "one"},
        {"id": "later", "prompt": "two", "model": "gpt-9-preview"},
        {"id": "good-2", "prompt": "three"},
    )
    before = start_recording_simulator()
    first = run_batchib(source, "-o", "out.jsonl", "--model", MODEL, "--base-url", before.url)
    assert first.status == 3, first.stderr
    assert first.summary()["failures_by_code"] == {"model_not_found": 1}
    # The gateway learns the model; a rerun sends the failed request, and only it.
    after = start_recording_simulator(
        SimulatorSettings(models={**DEFAULT_MODELS, "gpt-9-preview": "gpt-9-preview-2027"})
    )

    # Another gateway (port) than the one that wrote OUTPUT: allowed explicitly.
    rerun = run_batchib(
        source, "-o", "out.jsonl", "--model", MODEL, "--base-url", after.url, "--allow-mixed"
    )

    assert rerun.status == 0, rerun.stderr
    assert user_prompts(after.bodies()) == {"two"}
    assert len(after.requests) == 1
    summary = rerun.summary()
    assert summary["counts"]["skipped_already_done"] == 2
    assert summary["counts"]["succeeded"] == 1
    latest = {r["custom_id"]: r["batchib"]["status"] for r in rerun.records()}
    assert latest == {"good-1": "succeeded", "later": "succeeded", "good-2": "succeeded"}


def test_overwrite_sends_everything_and_keeps_only_the_new_lines(
    sample, run_batchib, start_recording_simulator
):
    gateway = start_recording_simulator()
    source = sample("batch_api.jsonl")
    args = (source, "-o", "out.jsonl", "--base-url", gateway.url)
    first = run_batchib(*args)
    assert first.status == 0, first.stderr
    first_ids = {r["id"] for r in first.records()}
    gateway.clear()

    again = run_batchib(*args, "--overwrite")

    assert again.status == 0, again.stderr
    assert len(gateway.requests) == len(first_ids)
    records = again.records()
    assert len(records) == len(first_ids)
    assert not first_ids & {r["id"] for r in records}
    assert again.summary()["counts"]["skipped_already_done"] == 0


def test_torn_last_line_does_not_break_the_rerun(
    sample, run_batchib, start_recording_simulator, tmp_path
):
    gateway = start_recording_simulator()
    source = sample("batch_api.jsonl")
    args = (source, "-o", "out.jsonl", "--base-url", gateway.url)
    first = run_batchib(*args)
    assert first.status == 0, first.stderr
    gateway.clear()
    # A crash while writing the last record: only its first half reached the file.
    output = tmp_path / "out.jsonl"
    lines = output.read_bytes().splitlines(keepends=True)
    torn = lines[-1][: len(lines[-1]) // 2]
    output.write_bytes(b"".join(lines[:-1]) + torn)
    torn_id = json.loads(lines[-1])["custom_id"]

    rerun = run_batchib(*args)

    assert rerun.status == 0, rerun.stderr
    assert len(gateway.requests) == 1
    after = output.read_bytes().splitlines()
    # The torn fragment is set aside, not dropped; every line left is a whole record.
    assert (tmp_path / "out.jsonl.torn").read_bytes() == torn + b"\n"
    assert after[: len(lines) - 1] == [line.rstrip(b"\n") for line in lines[:-1]]
    new_records = [json.loads(line) for line in after[len(lines) - 1 :]]
    assert [r["custom_id"] for r in new_records] == [torn_id]
    assert new_records[0]["batchib"]["status"] == "succeeded"
    assert rerun.summary()["resume"] == {
        "previously_done": len(lines) - 1,
        "unreadable_lines": 0,
        "torn_bytes_set_aside": len(torn),
        "torn_file": "out.jsonl.torn",
    }


def test_rerun_with_other_defaults_is_refused_unless_allowed(
    sample, run_batchib, start_recording_simulator
):
    gateway = start_recording_simulator()
    source = sample("prompts.jsonl")
    first = run_batchib(source, "-o", "out.jsonl", "--model", MODEL, "--base-url", gateway.url)
    assert first.status == 0, first.stderr
    gateway.clear()

    other = run_batchib(source, "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", gateway.url)

    assert other.status == 2
    assert "model: 'gpt-5.4-mini' before, 'gpt-5.4' now" in other.stderr
    assert gateway.requests == []
    allowed = run_batchib(
        source, "-o", "out.jsonl", "--model", "gpt-5.4", "--base-url", gateway.url,
        "--allow-mixed",
    )  # fmt: skip
    assert allowed.status == 0, allowed.stderr
    assert len(gateway.requests) == 60
