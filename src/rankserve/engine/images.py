"""Image passages -> pixel tiles, the way NVIDIA's VL retrievers cut them (Pillow only).

Runs in the engine's tokenize pool, never on the event loop. Steps, each with its own 400:

1. ``data:image/<type>;base64,<payload>`` (a data URL; no remote fetches), the payload strict
   base64 and at most ``max_bytes`` once decoded;
2. opened with Pillow restricted to PNG, JPEG, WebP, GIF, BMP and TIFF (the first frame of an
   animation); its header's width x height must be at most ``max_pixels`` *before* any pixel is
   decoded (a decompression bomb is a small file that claims a huge canvas);
3. RGB, transparency composited on white (a transparent screenshot means white, not black);
4. tiles (``TilePolicy.grid``, the model's, in ``models/nemotron_vl.py``): among grids (cols, rows) with ``min_tiles`` <= cols*rows <= ``max_tiles``,
   sorted by cols*rows, the first maximum of ``min(cols*rows*S^2 / (W*H), 0.6) * closeness of the
   aspect ratios``: enough tiles to keep detail, never stretching the page much. The image is
   resized (bicubic) to cols*S x rows*S and cropped row-major into S x S tiles; with more than one
   tile a whole-image thumbnail (S x S) follows when ``use_thumbnail``;
5. the tiles as one uint8 tensor [T, 3, S, S]: a quarter of float32's memory while a request waits
   in the queue; the model scales and normalizes them (``models/nemotron_vl.py``).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rankserve.errors import InvalidRequest
from rankserve.models.nemotron_vl import TilePolicy

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# data-URL media types accepted (the decoded bytes must still be one of FORMATS)
MEDIA_TYPES = {"png", "jpeg", "jpg", "pjpeg", "webp", "gif", "bmp", "x-ms-bmp", "tiff", "tif"}
DATA_URL = re.compile(r"data:image/([A-Za-z0-9.+-]+);base64,", re.IGNORECASE)
# Pillow warns about (and past 2x refuses) images over its own global pixel limit; ``decode`` applies
# the server's ``max_image_pixels`` to the header instead, so the warning is noise in the server log.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def as_tensor(tiles: list[Image.Image]) -> torch.Tensor:
    """RGB tiles -> [T, 3, S, S] uint8."""
    array = np.stack([np.asarray(t, dtype=np.uint8) for t in tiles])  # [T, S, S, 3]
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def decode(value: str, where: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """A data URL -> an RGB Pillow image, or ``InvalidRequest`` naming ``where`` (``passages[3].image``,
    whose ``param`` is ``passages.3.image``) and the reason."""
    param = where.replace("[", ".").replace("]", "")
    match = DATA_URL.match(value)
    if match is None:
        raise InvalidRequest(
            f"{where}: not a base64 image data URL; send data:image/png;base64,<data> "
            f"(PNG, JPEG, WebP, GIF, BMP or TIFF)",
            param=param,
        )
    media = match.group(1).lower()
    if media not in MEDIA_TYPES:
        raise InvalidRequest(
            f"{where}: image type image/{media} is not supported; supported: PNG, JPEG, WebP, GIF, BMP, TIFF",
            param=param,
        )
    payload = value[match.end() :]
    if len(payload) * 3 // 4 > max_bytes + 2:  # refuse before decoding megabytes of base64
        raise InvalidRequest(
            f"{where}: the image holds about {len(payload) * 3 // 4:,} bytes; the limit is "
            f"{max_bytes:,} (max_image_bytes)",
            param=param,
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: the data after 'base64,' is not valid base64", param=param) from None
    if len(raw) > max_bytes:
        raise InvalidRequest(
            f"{where}: the image holds {len(raw):,} bytes; the limit is {max_bytes:,} (max_image_bytes)", param=param
        )
    try:
        image = Image.open(io.BytesIO(raw), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise InvalidRequest(
            f"{where}: the image's header claims more than {(Image.MAX_IMAGE_PIXELS or 0) * 2:,} pixels; "
            f"the limit is {max_pixels:,} (max_image_pixels)",
            param=param,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidRequest(
            f"{where}: the bytes are not a PNG, JPEG, WebP, GIF, BMP or TIFF image that can be decoded", param=param
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidRequest(
            f"{where}: the image is {width} x {height} = {width * height:,} pixels; the limit is "
            f"{max_pixels:,} (max_image_pixels)",
            param=param,
        )
    if width < 1 or height < 1:
        raise InvalidRequest(f"{where}: the image is empty ({width} x {height})", param=param)
    try:
        image.load()
        return rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"{where}: the {image.format} image cannot be decoded ({exc})", param=param) from None


def rgb(image: Image.Image) -> Image.Image:
    """RGB; an image with transparency is composited on white first."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def image_tiles(value: str, where: str, policy: TilePolicy, max_bytes: int, max_pixels: int) -> torch.Tensor:
    """A passage's image (data URL) -> its tiles [T, 3, S, S] uint8."""
    return as_tensor(policy.tiles(decode(value, where, max_bytes, max_pixels)))
