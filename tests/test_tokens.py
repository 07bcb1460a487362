"""Token estimates: the encoding per model, the cookbook's published ids and chat counts,
the chat overhead rules, very long texts, and the chars/4 fallback without bpe-openai."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from batchib import tokens
from batchib.tokens import (
    BpeCounter,
    CharCounter,
    counter_for_model,
    encoding_for_model,
    estimate_prompt_tokens,
    estimate_request_tokens,
    max_completion_tokens,
    text_chunks,
    tokenizer_available,
)

# The OpenAI cookbook's "How to count tokens with tiktoken", section 6: the API itself
# reported 124 prompt tokens for gpt-4o / gpt-4o-mini and 129 for gpt-4 / gpt-3.5-turbo.
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


class LenCounter:
    """A token per character, so that the chat rules can be checked by eye."""

    name = "len"

    def count_text(self, text: str) -> int:
        return len(text)


def bpe(encoding: str) -> BpeCounter:
    counter = counter_for_model({"o200k_base": "gpt-4o", "cl100k_base": "gpt-4"}[encoding])
    assert isinstance(counter, BpeCounter)
    return counter


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),  # Azure's spelling
        ("GPT-4", "cl100k_base"),
        ("azure/gpt-4", "cl100k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("ft:gpt-4-0613:acme::abc123", "cl100k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("fast-model", "o200k_base"),  # a gateway alias
        ("llama-3.1-70b", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_encoding_for_model_maps_names_to_encodings(model: str, encoding: str) -> None:
    assert encoding_for_model(model) == encoding


def test_counter_for_model_uses_the_real_encoding_when_installed() -> None:
    assert tokenizer_available()
    assert counter_for_model("gpt-4o").name == "o200k_base"
    assert counter_for_model("gpt-3.5-turbo").name == "cl100k_base"
    assert counter_for_model("some-alias").name == "o200k_base"


def test_counters_are_cached_per_model_and_encoders_per_encoding() -> None:
    assert counter_for_model("gpt-4o") is counter_for_model("gpt-4o")
    gpt_5 = counter_for_model("gpt-5")
    assert isinstance(gpt_5, BpeCounter)
    assert gpt_5.encoding is bpe("o200k_base").encoding


@pytest.mark.parametrize(
    ("encoding", "text", "ids"),
    [
        # Published in the cookbook notebook (sections 3 and 5).
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
        ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
        ("cl100k_base", "antidisestablishmentarianism", [519, 85342, 34500, 479, 8997, 2191]),
        ("o200k_base", "antidisestablishmentarianism", [493, 129901, 376, 160388, 21203, 2367]),
        ("cl100k_base", "2 + 2 = 4", [17, 489, 220, 17, 284, 220, 19]),
        ("o200k_base", "2 + 2 = 4", [17, 659, 220, 17, 314, 220, 19]),
        (
            "cl100k_base",
            "お誕生日おめでとう",
            [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699],
        ),
        ("o200k_base", "お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
    ],
)
def test_token_ids_match_the_cookbooks_published_examples(
    encoding: str, text: str, ids: list[int]
) -> None:
    counter = bpe(encoding)
    assert counter.encode_ordinary(text) == ids
    assert counter.count_text(text) == len(ids)


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_the_directly_loaded_tokenizer_counts_as_the_bpe_openai_package_does(
    encoding: str,
) -> None:
    # batchib loads bpe-openai's compiled module without the package's __init__; the
    # package's own public API must give the same ids on every kind of text.
    import bpe_openai

    public = bpe_openai.get_encoding(encoding)
    texts = [
        "",
        "Hello, world!",
        "<|endoftext|> and <|endofprompt|> as text",
        "naïve café — ½ ∑ \U0001d400\U0001d401\U0001d402 😀👍🏽 お誕生日おめでとう 你好\uff0c世界",
        "    indented\n\tcode()  \r\n\n\n  trailing   ",
        "1234567890 3.14159 -42 0x1F",
        "lone \ud800 surrogate",
        " ".join(f"word{i}" for i in range(2000)),
    ]
    counter = bpe(encoding)
    for text in texts:
        expected = public.encode_ordinary(text)
        assert counter.encode_ordinary(text) == expected, text[:40]
        assert counter.count_text(text) == len(expected), text[:40]


def test_counting_does_not_import_the_bpe_openai_package() -> None:
    # Its __init__ decodes every vocabulary into Python (half a second, ~100 MB).
    code = (
        "import sys; from batchib.tokens import counter_for_model; "
        "assert counter_for_model('gpt-4o').count_text('hello world') == 2; "
        "print('bpe_openai' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(("model", "expected"), [("gpt-4o", 124), ("gpt-4", 129)])
def test_cookbook_chat_example_counts_what_the_api_reported(model: str, expected: int) -> None:
    assert estimate_prompt_tokens({"model": model, "messages": COOKBOOK_MESSAGES}) == expected


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_special_token_text_in_a_prompt_is_counted_as_plain_text(encoding: str) -> None:
    # "<", "|", "end", "of", "text", "|", ">" — not the single special token, and no error.
    assert bpe(encoding).count_text("<|endoftext|>") == 7


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"messages": []}, 3, id="reply-primer-only"),
        # 3 per message + "user" + "Hi" + 3 primer
        pytest.param({"messages": [{"role": "user", "content": "Hi"}]}, 3 + 4 + 2 + 3, id="one"),
        pytest.param(
            {"messages": [{"role": "user", "name": "bob", "content": "Hi"}]},
            3 + 4 + 3 + 1 + 2 + 3,
            id="name-text-plus-one",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "abc"},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                            {
                                "type": "input_audio",
                                "input_audio": {"data": "...", "format": "wav"},
                            },
                            "not-a-part",
                        ],
                    }
                ]
            },
            # An https image's size is unknown offline: its high-detail worst case.
            3 + 4 + 3 + 1445 + 3,
            id="text-and-image-parts",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    }
                ]
            },
            3
            + len("assistant")
            + len('[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]')
            + 3,
            id="tool-calls-as-json",
        ),
        pytest.param(
            {"messages": [{"role": "tool", "tool_call_id": "c1", "content": "42"}]},
            3 + 4 + 2 + 2 + 3,
            id="tool-result",
        ),
        pytest.param(
            {
                "messages": [],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            3 + len('[{"type":"function","function":{"name":"f"}}]'),
            id="tool-definitions-as-json",
        ),
        pytest.param(
            {"messages": ["junk", {"role": "user", "content": "Hi", "weight": 1}]},
            3 + 4 + 2 + 3,
            id="non-text-fields-and-junk-ignored",
        ),
    ],
)
def test_chat_overhead_rules(body: dict[str, Any], expected: int) -> None:
    assert estimate_prompt_tokens(body, LenCounter()) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"max_tokens": 10}, 10),
        ({"max_completion_tokens": 48, "max_tokens": 10}, 48),
        ({"max_tokens": 10, "n": 3}, 30),
        ({"max_tokens": 10, "n": 0}, 10),
        ({"max_tokens": True}, None),
        ({"max_tokens": 1.5}, None),
    ],
)
def test_max_completion_tokens_covers_all_choices(
    body: dict[str, Any], expected: int | None
) -> None:
    assert max_completion_tokens(body) == expected


def test_request_estimate_is_prompt_plus_completion_cap() -> None:
    body = {"model": "gpt-4o", "messages": COOKBOOK_MESSAGES, "max_tokens": 10, "n": 2}
    assert estimate_request_tokens(body) == 124 + 20
    assert (
        estimate_request_tokens(body, LenCounter())
        == estimate_prompt_tokens(body, LenCounter()) + 20
    )


@pytest.mark.parametrize(
    ("text", "size", "chunks"),
    [
        ("short", 10, ["short"]),
        ("", 10, [""]),
        ("aaa bbb ccc", 5, ["aaa", " bbb", " ccc"]),  # before a space between words
        ("ab!\ncd!\nef", 4, ["ab!", "\ncd!", "\nef"]),  # no space: before a newline
        ("aaaaaaaaaa", 4, ["aaaa", "aaaa", "aa"]),  # neither: at the size
    ],
)
def test_text_chunks_cut_at_spaces_then_newlines_then_anywhere(
    text: str, size: int, chunks: list[str]
) -> None:
    assert list(text_chunks(text, size)) == chunks


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize(
    ("unit", "repeats"),
    [
        (" hello", 200_000),  # " hello" is one token in both encodings
        ("The quick brown fox jumps over the lazy dog, twice!  Then it rests.\n\n", 16_000),
    ],
)
def test_long_text_with_spaces_counts_exactly_the_sum_of_its_parts(
    encoding: str, unit: str, repeats: int
) -> None:
    # Over 1,000,000 characters, which bpe-openai refuses in one call. Cuts go before a
    # space between two words, where no pre-token crosses, so nothing is lost.
    counter = bpe(encoding)
    text = unit * repeats
    assert len(text) > 1_000_000
    assert counter.count_text(text) == repeats * counter.count_text(unit)


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize(
    "unit",
    [
        "数据处理很重要。\n",  # cut before "\n": "。\n" is one pre-token, split in two
        "antidisestablishmentarianism,",  # cut inside a word
    ],
)
def test_long_text_without_spaces_counts_within_one_token_per_cut(encoding: str, unit: str) -> None:
    # Without a space to cut at, a cut may split one pre-token, whose pieces then encode
    # to a token or so more than it would whole; every other token is unaffected.
    counter = bpe(encoding)
    repeats = 1_100_000 // len(unit) + 1
    text = unit * repeats
    cuts = sum(1 for _ in text_chunks(text)) - 1
    assert cuts > 20
    assert abs(counter.count_text(text) - repeats * counter.count_text(unit)) <= cuts


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_text_of_rare_characters_beyond_the_per_call_token_limit_never_raises(
    encoding: str,
) -> None:
    # About three tokens per character: a million characters is far beyond the 200,000
    # tokens bpe-openai accepts in one call.
    text = "".join(chr(0x1D400 + i % 1000) for i in range(1_000_000))
    assert bpe(encoding).count_text(text) > 2_000_000


def clear_caches() -> None:
    counter_for_model.cache_clear()
    tokens._load_encoding.cache_clear()


@pytest.fixture
def without_tokenizer(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As if bpe-openai were not installed: `import bpe_openai` raises ImportError."""
    clear_caches()
    monkeypatch.setitem(sys.modules, "bpe_openai", None)
    yield
    clear_caches()  # so that later tests load the real encoding again


@pytest.mark.usefixtures("without_tokenizer")
def test_without_bpe_openai_counts_fall_back_to_four_characters_per_token() -> None:
    assert not tokenizer_available()
    counter = counter_for_model("gpt-4o")
    assert counter.name == "chars/4"
    assert isinstance(counter, CharCounter)
    assert [counter.count_text(t) for t in ["", "a", "abcd", "abcde", "x" * 2_000_001]] == [
        0,
        1,
        1,
        2,
        500_001,
    ]
    # Texts 2+25+2+3+12+2+5+13+2+3+25+2+5+16+1+22 = 140, 6 messages x 3, 4 names, primer 3.
    assert estimate_prompt_tokens({"model": "gpt-4o", "messages": COOKBOOK_MESSAGES}) == 165


def test_importing_the_cli_does_not_import_the_tokenizer() -> None:
    code = "import sys, batchib.cli, batchib.tokens; assert 'bpe_openai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
