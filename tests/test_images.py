"""Image tokens by the tile rule, with sizes read from data-URL headers."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from batchib.images import image_size, image_tokens, tile_tokens


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        (1024, 1024, 765),  # the cookbook's example: 4 tiles
        (512, 512, 255),  # one tile
        (2048, 4096, 1105),  # fit in 2048 -> 1024x2048, short side 768 -> 768x1536: 2x3 tiles
        (4096, 1536, 1445),  # 2048x768: 4x2 tiles, the worst case
        (100, 100, 255),
    ],
)
def test_tile_rule(width: int, height: int, tokens: int) -> None:
    assert tile_tokens(width, height) == tokens


def png(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(header))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (png(1024, 768), (1024, 768)),
        (b"GIF89a" + struct.pack("<HH", 300, 200) + b"\x00" * 10, (300, 200)),
        (jpeg(640, 480), (640, 480)),
        (b"not an image at all", None),
    ],
)
def test_sizes_from_image_headers(data: bytes, size: tuple[int, int] | None) -> None:
    assert image_size(data) == size


def test_data_url_image_is_priced_by_its_real_size() -> None:
    url = "data:image/png;base64," + base64.b64encode(png(1024, 1024)).decode()
    assert image_tokens({"type": "image_url", "image_url": {"url": url, "detail": "high"}}) == 765


@pytest.mark.parametrize(
    ("image", "tokens"),
    [
        ({"url": "https://example.com/a.png", "detail": "low"}, 85),
        ({"url": "https://example.com/a.png"}, 1445),  # size unknown offline: worst case
        ({"url": "data:image/png;base64,!!!"}, 1445),
    ],
)
def test_detail_and_unknown_sizes(image: dict[str, str], tokens: int) -> None:
    assert image_tokens({"type": "image_url", "image_url": image}) == tokens
