"""Image tokens before sending, by OpenAI's tile rule for tile models (gpt-4o, gpt-4.1):
`detail: low` costs 85; `high` (and `auto`, priced as its worst case) fits the image in
2048x2048, scales its short side down to 768, and costs 85 + 170 per 512-px tile.

The size is read from a `data:` URL's image header (PNG, GIF, JPEG, WebP) without
decoding it. An https image's size is not known offline: it is priced at the largest
high-detail cost, 1,445 tokens (an upper bound, stated in the estimate's assumptions).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

LOW_DETAIL_TOKENS = 85
BASE_TOKENS = 85
TILE_TOKENS = 170
# The worst case of the rule: a 2048x768 (or longer) image makes 4 x 2 tiles.
MAX_HIGH_DETAIL_TOKENS = BASE_TOKENS + TILE_TOKENS * 8
HEADER_BYTES = 64 * 1024  # enough of an image to find its size


def tile_tokens(width: int, height: int) -> int:
    """High-detail tokens of a width x height image."""
    if width <= 0 or height <= 0:
        return MAX_HIGH_DETAIL_TOKENS
    fit = min(1.0, 2048 / max(width, height))
    w, h = width * fit, height * fit
    short = min(1.0, 768 / min(w, h))
    w, h = w * short, h * short
    return BASE_TOKENS + TILE_TOKENS * math.ceil(w / 512) * math.ceil(h / 512)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, GIF, JPEG or WebP image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        # Start-of-frame markers carry the size (not DHT c4, JPG c8, DAC cc).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return int(width), int(height)
        position += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def image_tokens(part: dict[str, object]) -> int:
    """Tokens of one `image_url` content part."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    detail = image.get("detail", "auto") if isinstance(image, dict) else "auto"
    if detail == "low":
        return LOW_DETAIL_TOKENS
    if isinstance(url, str) and url.startswith("data:"):
        size = _data_url_size(url)
        if size is not None:
            return tile_tokens(*size)
    return MAX_HIGH_DETAIL_TOKENS


def _data_url_size(url: str) -> tuple[int, int] | None:
    _, sep, payload = url.partition(",")
    if not sep:
        return None
    # Enough base64 to cover the header (4 characters per 3 bytes).
    head = payload[: HEADER_BYTES * 4 // 3 // 4 * 4]
    try:
        data = base64.b64decode(head, validate=False)
    except (binascii.Error, ValueError):
        return None
    return image_size(data)
