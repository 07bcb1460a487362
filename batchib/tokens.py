"""Offline token estimates, made before a request is sent.

Text is counted with the model's real encoding when the optional `bpe-openai` package is
installed (``pip install 'batchib[tokenizer]'``; its wheel carries `o200k_base` and
`cl100k_base`, so nothing is downloaded), and at about four characters per token when it
is not. Around the text, the chat overhead of the OpenAI cookbook ("How to count tokens
with tiktoken"): 3 tokens per message, 1 more per `name`, 3 for the reply primer, and the
text of every field of a message — role and name as well as content. Approximations:
image parts cost 85 (the `detail: low` price); tool definitions and assistant tool calls
cost the tokens of their JSON text (the model sees them in another layout).
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from batchib.images import image_tokens

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER_TOKENS = 3

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"

# bpe-openai refuses a text of 1,000,000 characters or more and, less visibly, any text
# that encodes to more than 200,000 tokens (TokenLimitError). A token covers at least one
# UTF-8 byte and a character is at most four, so 50,000 characters can never reach that.
CHUNK_CHARS = 50_000


class TokenCounter(Protocol):
    """Counts the tokens of a text, for one encoding."""

    @property
    def name(self) -> str:
        """The encoding: `"o200k_base"`, `"cl100k_base"`, or `"chars/4"` for the estimate."""
        ...

    def count_text(self, text: str) -> int:
        """Tokens of `text` (any length; it never raises for a long one)."""
        ...


class CharCounter:
    """The fallback when no tokenizer is installed: a token per four characters, rounded up."""

    name = "chars/4"

    def count_text(self, text: str) -> int:
        return -(-len(text) // CHARS_PER_TOKEN)


ROUGH_COUNTER = CharCounter()


class Encoding(Protocol):
    """What is used of bpe-openai's Rust tokenizer (`bpe_openai._bindings.PyTokenizer`)."""

    def encode(self, text: str) -> list[int]: ...

    def count(self, text: str) -> int: ...


@dataclass(frozen=True, slots=True)
class BpeCounter:
    """Exact counts with a BPE encoding; texts longer than CHUNK_CHARS go in chunks."""

    name: str
    encoding: Encoding

    def encode_ordinary(self, text: str) -> list[int]:
        """The token ids of `text`, special-token text counted as plain text (tiktoken's
        `encode_ordinary`): for tests against published ids."""
        return list(self.encoding.encode(_encodable(text)))

    def count_text(self, text: str) -> int:
        # The Rust tokenizer never treats "<|endoftext|>" in a prompt as a special token.
        if len(text) <= CHUNK_CHARS:
            return self._count(text)
        return sum(self._count(chunk) for chunk in text_chunks(text))

    def _count(self, text: str) -> int:
        try:
            return self.encoding.count(text)
        except UnicodeEncodeError:  # a lone surrogate; JSON input can carry one
            return self.encoding.count(_encodable(text))


def _encodable(text: str) -> str:
    """`text` with lone surrogates replaced, as bpe-openai's own wrapper does."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def text_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """`text` cut into pieces of at most `size` characters, in order.

    A cut goes, by preference, before a space that has a non-space on each side: no
    pre-token of o200k_base or cl100k_base crosses such a space, so the pieces' counts add
    up to the whole text's exactly. Failing that, before the last newline (a pre-token
    like "!\\n" may split: a token or so off), failing that, at `size` (a word splits).
    """
    start = 0
    while len(text) - start > size:
        end = _cut(text, start, start + size)
        yield text[start:end]
        start = end
    yield text[start:]


def _cut(text: str, start: int, limit: int) -> int:
    # Only the later half of the window is searched, so that no chunk is tiny.
    low = start + (limit - start) // 2
    space = text.rfind(" ", low, limit)
    while space > low:
        if not text[space - 1].isspace() and not text[space + 1].isspace():
            return space
        space = text.rfind(" ", low, space)
    newline = text.rfind("\n", low, limit)
    return newline if newline > low else limit


def encoding_for_model(model: str) -> str:
    """The encoding a model's name implies: `cl100k_base` for gpt-4 (not gpt-4o or
    gpt-4.x) and gpt-3.5, `o200k_base` for everything else — gpt-4o, gpt-4.1, gpt-5, the
    o-series, and the names a gateway makes up. A provider prefix ("azure/gpt-4") and a
    fine-tune wrapper ("ft:gpt-4-0613:org::id") are looked through."""
    name = model.strip().lower()
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    name = name.rsplit("/", 1)[-1]
    if name.startswith(("gpt-4o", "gpt-4.")):
        return O200K_BASE
    if name.startswith(("gpt-4", "gpt-3.5", "gpt-35")):
        return CL100K_BASE
    return O200K_BASE


def _bindings_module() -> Any:
    """bpe-openai's compiled tokenizer, loaded on its own.

    `import bpe_openai` runs the package's __init__, which decodes all three shipped
    vocabularies into Python dicts (0.5 s, about 100 MB) that are only needed for decoding
    ids back to text. The extension module carries its own tables: loaded directly it takes
    0.05 s and a third of the memory, and counts exactly as the package does (a test
    compares them). Should the layout of the package change, the normal import is the
    fallback.
    """
    spec = importlib.util.find_spec("bpe_openai")  # finds the package, does not run it
    if spec is None:
        raise ImportError("bpe-openai is not installed")
    for directory in spec.submodule_search_locations or ():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(directory) / f"_bindings{suffix}"
            if not path.is_file():
                continue
            loader = importlib.machinery.ExtensionFileLoader("bpe_openai._bindings", str(path))
            module_spec = importlib.util.spec_from_loader(loader.name, loader)
            if module_spec is None:
                break
            module = importlib.util.module_from_spec(module_spec)
            loader.exec_module(module)
            return module
    from bpe_openai import _bindings

    return _bindings


@functools.cache
def _load_encoding(name: str) -> Encoding | None:
    # Loaded on first use, not with this module, so that `batchib --help` starts fast and
    # runs that never count tokens never pay for the tables.
    try:
        bindings = _bindings_module()
    except ImportError:
        logger.info("bpe-openai is not installed: token estimates use %s", CharCounter.name)
        return None
    encoding: Encoding = bindings.tokenizer_for_encoding(name)
    return encoding


def tokenizer_installed() -> bool:
    """Whether the `tokenizer` extra is installed, without loading it."""
    try:
        return importlib.util.find_spec("bpe_openai") is not None
    except ValueError:  # in sys.modules as None: import blocked
        return False


def tokenizer_available() -> bool:
    """Whether real token counts are possible (the `tokenizer` extra is installed).

    The first call imports the tokenizer, which takes about half a second."""
    return _load_encoding(O200K_BASE) is not None


@functools.lru_cache(maxsize=256)
def counter_for_model(model: str) -> TokenCounter:
    """The counter for a model: its real encoding when bpe-openai is installed, else the
    four-characters-per-token estimate. Cached per model name."""
    encoding_name = encoding_for_model(model)
    encoding = _load_encoding(encoding_name)
    if encoding is None:
        return CharCounter()
    return BpeCounter(encoding_name, encoding)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _content_tokens(content: Any, count: Callable[[str], int]) -> int:
    if isinstance(content, str):
        return count(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "image_url":
            total += image_tokens(part)
        elif isinstance(part.get("text"), str):
            total += count(part["text"])
    return total


def estimate_prompt_tokens(body: dict[str, Any], counter: TokenCounter | None = None) -> int:
    """Estimated prompt tokens of a chat body (messages, tool definitions).

    `counter` defaults to :func:`counter_for_model` of the body's model."""
    if counter is None:
        model = body.get("model")
        counter = counter_for_model(model if isinstance(model, str) else "")
    count = counter.count_text
    total = REPLY_PRIMER_TOKENS
    for message in body.get("messages", ()):
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        # As the cookbook does, every field's text counts: role, name, tool_call_id too.
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(value, count)
            elif isinstance(value, str):
                total += count(value)
            elif isinstance(value, dict | list):  # tool_calls, function_call
                total += count(_json_text(value))
        if "name" in message:
            total += TOKENS_PER_NAME
    for key in ("tools", "functions"):
        if body.get(key) is not None:
            total += count(_json_text(body[key]))
    return total


def max_completion_tokens(body: dict[str, Any]) -> int | None:
    """The completion cap a body sets for all its choices, or None when unbounded."""
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    if not isinstance(cap, int) or isinstance(cap, bool):
        return None
    n = body.get("n", 1)
    return cap * (n if isinstance(n, int) and n > 0 else 1)


def estimate_request_tokens(body: dict[str, Any], counter: TokenCounter | None = None) -> int:
    """What a gateway charges against a tokens-per-minute limit before it answers:
    the prompt plus the completion cap when one is set."""
    return estimate_prompt_tokens(body, counter) + (max_completion_tokens(body) or 0)
