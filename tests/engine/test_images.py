"""Image passages: tile grids worked by hand, crop order, thumbnail, normalization, every accepted
format, and every way an image can be bad (each a 400 naming the passage and the reason)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from rankserve.engine.images import decode, image_tiles
from rankserve.errors import InvalidRequest
from rankserve.models.nemotron_vl import TilePolicy

S = 32
POLICY = TilePolicy(size=S, max_tiles=4)
LIMITS = dict(max_bytes=1 << 20, max_pixels=1 << 22)


def data_url(image: Image.Image, fmt: str = "PNG", media: str | None = None) -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return f"data:image/{media or fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def raw_url(raw: bytes, media: str = "png") -> str:
    return f"data:image/{media};base64," + base64.b64encode(raw).decode()


# -- grids: (image size) -> (cols, rows), worked by hand with S = 32, 1..4 tiles ----------------
# candidates by tile count: (1,1) (1,2) (2,1) (1,3) (3,1) (1,4) (2,2) (4,1); factor =
# min(cols*rows*1024 / (W*H), 0.6) * min(r_grid / r, r / r_grid); the first maximum wins.
@pytest.mark.parametrize(
    "size, grid, why",
    [
        ((32, 32), (1, 1), "square: (1,1) and (2,2) both 0.6, the first wins"),
        ((8, 8), (1, 1), "small: more tiles only upscale, size factor capped at 0.6"),
        ((64, 32), (2, 1), "2:1 wide: (2,1) 0.6 beats (1,1) 0.5*0.5 and (4,1) 0.6*0.5"),
        ((32, 96), (1, 3), "1:3 tall: (1,3) 0.6 exactly"),
        ((48, 32), (2, 1), "3:2: (2,1) 0.6*0.75 = 0.45 beats (1,1) 0.6*0.667 = 0.4"),
        ((100, 10), (4, 1), "10:1 strip: widest grid allowed, 0.6*0.4"),
        ((1000, 1000), (2, 2), "big square: (2,2) keeps 4x the detail of (1,1), both far under the 0.6 cap"),
        ((1000, 500), (2, 1), "big 2:1: (2,1) 0.0041 beats (1,1) 0.0010 and (2,2) 0.0082*0.5"),
    ],
)
def test_grid_by_hand(size, grid, why):
    assert POLICY.grid(*size) == grid, why


def test_tile_counts_with_and_without_thumbnail():
    assert POLICY.tile_count(64, 32) == 3  # 2 tiles + thumbnail
    assert POLICY.tile_count(32, 32) == 1  # one tile: no thumbnail
    assert TilePolicy(size=S, max_tiles=4, use_thumbnail=False).tile_count(64, 32) == 2
    assert TilePolicy(size=S, max_tiles=1).tile_count(100, 10) == 1


def quadrants() -> Image.Image:
    """64 x 64: red | green over blue | white."""
    a = np.zeros((64, 64, 3), dtype=np.uint8)
    a[:32, :32] = (255, 0, 0)
    a[:32, 32:] = (0, 255, 0)
    a[32:, :32] = (0, 0, 255)
    a[32:, 32:] = (255, 255, 255)
    return Image.fromarray(a)


def test_tiles_are_row_major_then_thumbnail():
    policy = TilePolicy(size=S, max_tiles=4, min_tiles=4)  # forces (2,2) on a square
    tiles = policy.tiles(quadrants())
    assert len(tiles) == 5 and all(t.size == (S, S) for t in tiles)
    centres = [t.getpixel((16, 16)) for t in tiles[:4]]
    assert centres == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    thumb = tiles[4]  # the whole image at S x S: its four quadrants keep their colours
    assert [thumb.getpixel(p) for p in ((8, 8), (24, 8), (8, 24), (24, 24))] == centres


def test_tiles_tensor():
    px = image_tiles(data_url(quadrants()), "passages[0].image", TilePolicy(size=S, max_tiles=4, min_tiles=4), **LIMITS)
    assert px.shape == (5, 3, S, S) and px.dtype == torch.uint8  # uint8 while queued; the model normalizes
    assert px[0, :, 16, 16].tolist() == [255, 0, 0]
    assert px[3, :, 16, 16].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_supported_format_decodes(fmt):
    image = decode(data_url(quadrants(), fmt), "passages[0].image", **LIMITS)
    assert image.mode == "RGB" and image.size == (64, 64)
    r, g, b = image.getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60  # still red (JPEG/WebP are lossy, GIF is paletted)


def test_transparency_is_white_and_modes_become_rgb():
    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert decode(data_url(clear), "p", **LIMITS).getpixel((5, 5)) == (255, 255, 255)
    grey = Image.new("L", (10, 10), 128)
    assert decode(data_url(grey), "p", **LIMITS).getpixel((5, 5)) == (128, 128, 128)
    assert decode(data_url(quadrants().convert("P")), "p", **LIMITS).getpixel((40, 40)) == (255, 255, 255)


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, all zeros: a few kB that claim a huge canvas."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    body = zlib.compress(row * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def png_bytes() -> bytes:
    buf = io.BytesIO()
    quadrants().save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "value, reason",
    [
        ("https://example.com/page.png", "not a base64 image data URL"),
        ("data:text/plain;base64,aGVsbG8=", "not a base64 image data URL"),
        ("data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=", "image/svg+xml is not supported"),
        ("data:image/png;base64,@@not base64@@", "not valid base64"),
        (raw_url(b"definitely not an image, just text"), "not a PNG, JPEG, WebP, GIF, BMP or TIFF"),
        (raw_url(b"P6\n4 4\n255\n" + bytes(48)), "not a PNG, JPEG, WebP, GIF, BMP or TIFF"),  # PPM: not accepted
        (raw_url(png_bytes()[:120]), "cannot be decoded"),  # truncated after the header
        (raw_url(bomb_png(10_000, 10_000)), "100,000,000 pixels; the limit is 4,194,304"),
        (raw_url(bomb_png(20_000, 20_000)), "the limit is 4,194,304 (max_image_pixels)"),  # past Pillow's own refusal
        (raw_url(png_bytes() + bytes(2 << 20)), "the limit is 1,048,576 (max_image_bytes)"),
    ],
)
def test_bad_images_are_400s_naming_the_passage(value, reason):
    with pytest.raises(InvalidRequest) as info:
        decode(value, "passages[3].image", **LIMITS)
    assert info.value.message.startswith("passages[3].image: ")
    assert reason in info.value.message
    assert info.value.param == "passages.3.image"


def test_bomb_is_refused_before_decoding():
    """The pixel limit is checked on the header: a 10^8-pixel PNG never gets its pixels decoded."""
    raw = bomb_png(10_000, 10_000)
    assert len(raw) < 100_000
    with pytest.raises(InvalidRequest, match="pixels"):
        decode(raw_url(raw), "passages[0].image", max_bytes=1 << 20, max_pixels=1 << 22)
    # under a limit that allows it, the same file decodes (the refusal was the limit, not the file)
    ok = decode(raw_url(bomb_png(300, 200)), "p", **LIMITS)
    assert ok.size == (300, 200)
