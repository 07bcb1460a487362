"""Input lines: the three line formats, defaults, bad lines, ids and hashes."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from batchib.config import RequestDefaults
from batchib.inputs import (
    InvalidLine,
    Request,
    hash_body,
    parse_line,
    positional_id,
)
from batchib.tokens import estimate_request_tokens

NO_DEFAULTS = RequestDefaults()
MODEL = RequestDefaults(model="gpt-default")
HI = {"role": "user", "content": "Hi"}
FILE = "inputs/batch.jsonl"
LINE = 7


def parse(line: Any, defaults: RequestDefaults = MODEL) -> Request | InvalidLine:
    raw = line if isinstance(line, bytes) else orjson.dumps(line)
    return parse_line(raw, FILE, LINE, defaults)


def parse_request(line: Any, defaults: RequestDefaults = MODEL) -> Request:
    item = parse(line, defaults)
    assert isinstance(item, Request), item
    return item


def parse_invalid(line: Any, defaults: RequestDefaults = MODEL) -> InvalidLine:
    item = parse(line, defaults)
    assert isinstance(item, InvalidLine), item
    return item


# --- the three line formats ---------------------------------------------------------------


def test_batch_line_becomes_its_body_with_custom_id_and_metadata() -> None:
    request = parse_request(
        {
            "custom_id": "request-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4.1", "messages": [HI], "max_tokens": 40},
            "metadata": {"row": 1},
        }
    )

    assert request.custom_id == "request-1"
    assert request.body == {"model": "gpt-4.1", "messages": [HI], "max_tokens": 40}
    assert request.metadata == {"row": 1}
    assert (request.file, request.line) == (FILE, LINE)
    assert request.model == "gpt-4.1"
    assert request.body_bytes == (
        b'{"max_tokens":40,"messages":[{"content":"Hi","role":"user"}],"model":"gpt-4.1"}'
    )
    assert request.body_hash == hashlib.sha256(request.body_bytes).hexdigest()


@pytest.mark.parametrize(
    "envelope",
    [
        {"url": "/chat/completions"},
        {"method": "POST"},
        {"method": "POST", "url": "/v1/chat/completions"},
    ],
)
def test_batch_line_accepts_short_url_and_defaults_method_and_url(
    envelope: dict[str, str],
) -> None:
    request = parse_request({"custom_id": "r", **envelope, "body": {"messages": [HI]}})

    assert request.custom_id == "r"
    assert request.body == {"model": "gpt-default", "messages": [HI]}
    assert request.metadata is None


def test_batch_line_without_custom_id_gets_the_positional_id() -> None:
    request = parse_request({"body": {"messages": [HI]}})

    assert request.custom_id == "batch.jsonl:7"


@pytest.mark.parametrize(
    ("id_field", "expected_id"),
    [
        ({"custom_id": "chat-001"}, "chat-001"),
        ({"id": "chat-002"}, "chat-002"),
        ({"id": 42}, "42"),
        ({"custom_id": None}, "batch.jsonl:7"),
        ({}, "batch.jsonl:7"),
    ],
)
def test_chat_body_takes_id_and_metadata_out_of_the_body(
    id_field: dict[str, Any], expected_id: str
) -> None:
    request = parse_request(
        {
            **id_field,
            "model": "gpt-5.4",
            "messages": [{"role": "developer", "content": "Be concise."}, HI],
            "max_completion_tokens": 48,
            "temperature": 0.2,
            "metadata": {"source": "chat_bodies", "row": 1},
        }
    )

    assert request.custom_id == expected_id
    assert request.body == {
        "model": "gpt-5.4",
        "messages": [{"role": "developer", "content": "Be concise."}, HI],
        "max_completion_tokens": 48,
        "temperature": 0.2,
    }
    assert request.metadata == {"source": "chat_bodies", "row": 1}
    assert (request.file, request.line) == (FILE, LINE)


def test_prompt_shorthand_becomes_system_and_user_messages_with_extra_body_fields() -> None:
    request = parse_request(
        {
            "id": "prompt-001",
            "prompt": "Explain photosynthesis.",
            "system": "You are a tutor.",
            "model": "gpt-4.1",
            "temperature": 0.5,
            "response_format": {"type": "text"},
            "metadata": {"topic": "photosynthesis"},
        }
    )

    assert request.custom_id == "prompt-001"
    assert request.body == {
        "model": "gpt-4.1",
        "temperature": 0.5,
        "response_format": {"type": "text"},
        "messages": [
            {"role": "system", "content": "You are a tutor."},
            {"role": "user", "content": "Explain photosynthesis."},
        ],
    }
    assert request.metadata == {"topic": "photosynthesis"}
    assert (request.file, request.line) == (FILE, LINE)


@pytest.mark.parametrize("system", [None, ""])
def test_prompt_shorthand_without_system_is_one_user_message(system: str | None) -> None:
    request = parse_request({"prompt": "Hi", "system": system})

    assert request.body == {"model": "gpt-default", "messages": [HI]}
    assert request.custom_id == "batch.jsonl:7"
    assert request.metadata is None


def test_token_estimate_counts_prompt_and_completion_cap() -> None:
    # 3 (reply primer) + 3 (one message) + 1 ("user") + 1 ("Hi") + 2 choices x 10 tokens.
    request = parse_request({"prompt": "Hi", "max_tokens": 10, "n": 2})

    assert estimate_request_tokens(request.body) == 28


def test_assistant_message_without_content_and_tool_message_with_id_are_valid() -> None:
    messages = [
        HI,
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    request = parse_request({"messages": messages, "n": 128})

    assert request.body == {"model": "gpt-default", "messages": messages, "n": 128}


# --- defaults -------------------------------------------------------------------------------

FULL_DEFAULTS = RequestDefaults(
    model="gpt-default",
    system="Be brief.",
    max_tokens=100,
    temperature=0.3,
    params={"seed": 7, "top_p": 0.9},
)


def test_defaults_fill_what_the_line_leaves_out() -> None:
    request = parse_request({"prompt": "Hi"}, FULL_DEFAULTS)

    assert request.body == {
        "model": "gpt-default",
        "max_tokens": 100,
        "temperature": 0.3,
        "seed": 7,
        "top_p": 0.9,
        "messages": [{"role": "system", "content": "Be brief."}, HI],
    }


def test_line_values_win_over_defaults() -> None:
    line = {
        "prompt": "Hi",
        "system": "Be verbose.",
        "model": "gpt-line",
        "max_tokens": 5,
        "temperature": 1.0,
        "seed": 1,
        "top_p": 0.5,
    }
    request = parse_request(line, FULL_DEFAULTS)

    assert request.body == {
        "model": "gpt-line",
        "max_tokens": 5,
        "temperature": 1.0,
        "seed": 1,
        "top_p": 0.5,
        "messages": [{"role": "system", "content": "Be verbose."}, HI],
    }


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Line system."}, HI],
        [{"role": "developer", "content": "Line developer."}, HI],
        [HI, {"role": "developer", "content": "Late developer."}],
    ],
)
def test_default_system_is_not_added_when_the_line_has_instructions(
    messages: list[dict[str, str]],
) -> None:
    request = parse_request({"messages": messages}, RequestDefaults(model="m", system="Default."))

    assert request.body["messages"] == messages


def test_default_system_goes_first_in_a_batch_line_body() -> None:
    defaults = RequestDefaults(model="m", system="Default.")
    request = parse_request({"custom_id": "r", "body": {"messages": [HI]}}, defaults)

    assert request.body["messages"] == [{"role": "system", "content": "Default."}, HI]


def test_default_max_tokens_is_not_added_when_the_line_sets_max_completion_tokens() -> None:
    defaults = RequestDefaults(model="m", max_tokens=100)
    request = parse_request({"prompt": "Hi", "max_completion_tokens": 48}, defaults)

    assert request.body == {"model": "m", "max_completion_tokens": 48, "messages": [HI]}


def test_default_cap_params_do_not_join_a_line_that_sets_a_cap() -> None:
    defaults = RequestDefaults(model="m", params={"max_tokens": 100, "seed": 7})
    request = parse_request({"prompt": "Hi", "max_completion_tokens": 48}, defaults)

    assert request.body == {
        "model": "m",
        "max_completion_tokens": 48,
        "seed": 7,
        "messages": [HI],
    }


def test_a_null_model_on_the_line_takes_the_default() -> None:
    request = parse_request({"prompt": "Hi", "model": None}, RequestDefaults(model="m"))

    assert request.body["model"] == "m"


# --- bad lines ------------------------------------------------------------------------------

BAD_LINES = [
    pytest.param(b'{"prompt": "Hi"', "invalid_json", id="invalid-json"),
    pytest.param(b'{"prompt": "caf\xe9"}', "invalid_json", id="invalid-utf8"),
    pytest.param(b'{"prompt":\x00 "Hi"}', "invalid_json", id="nul-outside-strings"),
    pytest.param(b'{"prompt": "Hi"}\x00', "invalid_json", id="nul-after-object"),
    pytest.param(b'["Hi"]', "not_an_object", id="list"),
    pytest.param(b'"Hi"', "not_an_object", id="string"),
    pytest.param(b"42", "not_an_object", id="number"),
    pytest.param(b"null", "not_an_object", id="null"),
    pytest.param({"question": "Hi"}, "unknown_shape", id="unknown-shape"),
    pytest.param({}, "unknown_shape", id="empty-object"),
    pytest.param(
        {"custom_id": "r", "body": {"messages": [HI]}, "extra": 1},
        "unknown_shape",
        id="batch-line-extra-field",
    ),
    pytest.param({"messages": [HI], "prompt": "Hi"}, "ambiguous_line", id="messages-and-prompt"),
    pytest.param({"custom_id": "a", "id": "b", "prompt": "Hi"}, "ambiguous_id", id="two-ids"),
    pytest.param({"messages": []}, "empty_messages", id="empty-messages"),
    pytest.param({"messages": {"role": "user"}}, "invalid_messages", id="messages-object"),
    pytest.param({"messages": "Hi"}, "invalid_messages", id="messages-string"),
    pytest.param({"messages": ["Hi"]}, "invalid_message", id="message-not-object"),
    pytest.param({"messages": [{"role": "robot", "content": "Hi"}]}, "invalid_message", id="role"),
    pytest.param({"messages": [{"content": "Hi"}]}, "invalid_message", id="no-role"),
    pytest.param({"messages": [{"role": "user"}]}, "invalid_message", id="user-no-content"),
    pytest.param(
        {"messages": [{"role": "user", "content": 5}]}, "invalid_message", id="content-number"
    ),
    pytest.param(
        {"messages": [HI, {"role": "assistant", "content": 5}]},
        "invalid_message",
        id="assistant-content-number",
    ),
    pytest.param(
        {"messages": [HI, {"role": "tool", "content": "42"}]},
        "invalid_message",
        id="tool-no-tool-call-id",
    ),
    pytest.param({"prompt": "Hi", "stream": True}, "stream_not_supported", id="stream"),
    pytest.param(
        {"prompt": "Hi", "stream_options": {"include_usage": True}},
        "stream_not_supported",
        id="stream-options-without-stream",
    ),
    pytest.param(
        {"custom_id": "e", "url": "/v1/embeddings", "body": {"messages": [HI]}},
        "unsupported_url",
        id="embeddings-url",
    ),
    pytest.param(
        {"custom_id": "g", "method": "GET", "body": {"messages": [HI]}},
        "unsupported_method",
        id="get",
    ),
    pytest.param({"custom_id": "b", "body": [HI]}, "invalid_body", id="batch-body-list"),
    pytest.param({"custom_id": "b", "url": "/v1/chat/completions"}, "invalid_body", id="no-body"),
    pytest.param({"prompt": "Hi", "model": ""}, "invalid_model", id="empty-model"),
    pytest.param({"prompt": "Hi", "model": 4}, "invalid_model", id="model-number"),
    pytest.param({"prompt": ""}, "invalid_prompt", id="empty-prompt"),
    pytest.param({"prompt": " \n "}, "invalid_prompt", id="blank-prompt"),
    pytest.param({"prompt": ["Hi"]}, "invalid_prompt", id="prompt-list"),
    pytest.param({"prompt": "Hi", "system": ["Be"]}, "invalid_system", id="system-list"),
    pytest.param({"prompt": "Hi", "n": 0}, "invalid_body", id="n-zero"),
    pytest.param({"prompt": "Hi", "n": 129}, "invalid_body", id="n-above-128"),
    pytest.param({"prompt": "Hi", "max_tokens": 0}, "invalid_body", id="max-tokens-zero"),
    pytest.param({"prompt": "Hi", "max_tokens": True}, "invalid_body", id="max-tokens-bool"),
    pytest.param({"prompt": "Hi", "max_tokens": 1.5}, "invalid_body", id="max-tokens-float"),
    pytest.param(
        {"prompt": "Hi", "max_completion_tokens": -1}, "invalid_body", id="max-completion-negative"
    ),
    pytest.param({"id": ["a"], "prompt": "Hi"}, "invalid_id", id="id-list"),
    pytest.param({"id": True, "prompt": "Hi"}, "invalid_id", id="id-bool"),
    pytest.param({"id": 1.5, "prompt": "Hi"}, "invalid_id", id="id-float"),
    pytest.param({"custom_id": "  ", "prompt": "Hi"}, "invalid_id", id="id-blank"),
    pytest.param(
        b'{"prompt": "Hi", "max_tokens": 18446744073709551616}',
        "number_out_of_range",
        id="max-tokens-beyond-64-bits",
    ),
    pytest.param(
        b'{"prompt": "Hi", "n": -9223372036854775809}',
        "number_out_of_range",
        id="n-below-64-bits",
    ),
]


@pytest.mark.parametrize(("line", "code"), BAD_LINES)
def test_bad_line_is_an_invalid_line_with_its_code_file_and_line(line: Any, code: str) -> None:
    invalid = parse_invalid(line)

    assert invalid.code == code, invalid.message
    assert (invalid.file, invalid.line) == (FILE, LINE)
    assert invalid.message


def test_missing_model_without_a_default_is_an_invalid_line() -> None:
    invalid = parse_invalid({"id": "no-model", "prompt": "Hi"}, NO_DEFAULTS)

    assert (invalid.code, invalid.custom_id, invalid.line) == ("missing_model", "no-model", LINE)
    assert invalid.message == "no model: set `model` on the line or pass --model"


@pytest.mark.parametrize(
    ("raw", "kind"), [(b"[1]", "list"), (b'"x"', "str"), (b"4.5", "float"), (b"null", "null")]
)
def test_not_an_object_message_names_what_the_line_is(raw: bytes, kind: str) -> None:
    assert parse_invalid(raw).message == f"expected a JSON object, got {kind}"


def test_invalid_line_keeps_the_id_it_names() -> None:
    invalid = parse_invalid({"id": "streamed", "prompt": "Hi", "stream": True})

    assert invalid.custom_id == "streamed"


def test_unparseable_line_gets_the_positional_id() -> None:
    invalid = parse_invalid(b'{"id": "broken", "prompt": "Hi"')

    assert invalid.custom_id == "batch.jsonl:7"


def test_role_that_is_a_list_is_an_invalid_message() -> None:
    invalid = parse_invalid({"messages": [{"role": ["user"], "content": "Hi"}]})

    assert invalid.code == "invalid_message"


def test_url_that_is_a_list_is_an_unsupported_url() -> None:
    invalid = parse_invalid({"custom_id": "r", "url": ["/v1/chat/completions"], "body": {}})

    assert invalid.code == "unsupported_url"


def test_integer_beyond_64_bits_in_any_body_field_is_an_invalid_line() -> None:
    item = parse(b'{"prompt": "Hi", "seed": 18446744073709551616}')

    assert isinstance(item, InvalidLine), item
    assert (item.code, item.line) == ("number_out_of_range", LINE)


def test_integers_at_the_64_bit_limits_are_kept_exactly() -> None:
    request = parse_request(
        b'{"prompt": "Hi", "seed": 18446744073709551615, "x": -9223372036854775808}'
    )

    assert request.body["seed"] == 2**64 - 1
    assert request.body["x"] == -(2**63)
    assert b'"seed":18446744073709551615' in request.body_bytes


# --- ids and hashes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "line", "expected"),
    [
        ("in.jsonl", 1, "in.jsonl:1"),
        ("data/in.jsonl", 12, "in.jsonl:12"),
        ("/abs/path/to/in.jsonl", 12, "in.jsonl:12"),
        ("-", 3, "stdin:3"),
    ],
)
def test_positional_id_is_the_basename_and_line(file: str, line: int, expected: str) -> None:
    assert positional_id(file, line) == expected


def test_positional_id_is_the_same_from_another_directory() -> None:
    here = parse_line(b'{"prompt": "Hi"}', "in.jsonl", 3, MODEL)
    there = parse_line(b'{"prompt": "Hi"}', "/elsewhere/in.jsonl", 3, MODEL)

    assert here.custom_id == there.custom_id == "in.jsonl:3"


def test_hash_body_is_the_sha256_hex_digest() -> None:
    assert hash_body(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_body_hash_ignores_key_order() -> None:
    one = parse_request(
        b'{"model": "m", "messages": [{"role": "user", "content": "Hi"}], "response_format":'
        b' {"type": "json_schema", "json_schema": {"name": "a", "strict": true}}}'
    )
    two = parse_request(
        b'{"response_format": {"json_schema": {"strict": true, "name": "a"},'
        b' "type": "json_schema"}, "messages": [{"content": "Hi", "role": "user"}], "model": "m"}'
    )

    assert one.body_bytes == two.body_bytes
    assert one.body_hash == two.body_hash


@pytest.mark.parametrize(
    "changed",
    [
        {"temperature": 0.3},
        {"model": "other"},
        {"messages": [{"role": "user", "content": "Hi!"}]},
    ],
)
def test_body_hash_changes_when_a_value_changes(changed: dict[str, Any]) -> None:
    base = {"model": "m", "messages": [HI], "temperature": 0.2}

    assert parse_request(base).body_hash != parse_request(base | changed).body_hash


def test_body_hash_ignores_id_and_metadata() -> None:
    one = parse_request({"id": "a", "prompt": "Hi", "metadata": {"row": 1}})
    two = parse_request({"id": "b", "prompt": "Hi", "metadata": {"row": 2}})

    assert one.body_hash == two.body_hash


@pytest.mark.parametrize(
    ("line", "code", "custom_id"),
    [
        ({"custom_id": "e1", "url": "/v1/embeddings", "body": {}}, "unsupported_url", "e1"),
        ({"custom_id": "g1", "method": "GET", "url": "/v1/chat/completions"}, None, "g1"),
        ({"custom_id": "b1", "body": "oops"}, "invalid_body", "b1"),
        ({"id": "s1", "text": "no prompt"}, "unknown_shape", "s1"),
        ({"custom_id": "s2", "prompt": ""}, "invalid_prompt", "s2"),
        ({"id": "s3", "prompt": "a", "messages": []}, "ambiguous_line", "s3"),
        # With no valid id of its own, a line keeps its place as its id.
        ({"id": "", "prompt": "a"}, "invalid_id", None),
        ({"id": "x", "custom_id": "y", "prompt": "a"}, "ambiguous_id", None),
    ],
)
def test_a_rejected_line_keeps_its_own_valid_id(
    line: dict[str, Any], code: str | None, custom_id: str | None
) -> None:
    invalid = parse_invalid(line)

    if code is not None:
        assert invalid.code == code
    assert invalid.custom_id == (custom_id or positional_id(FILE, LINE))
