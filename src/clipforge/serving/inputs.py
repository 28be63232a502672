"""Request inputs -> model inputs, within the service's limits.

Images arrive as base64, ``data:`` URIs, uploaded bytes or (when allowed) URLs. Each is checked before it costs
memory: the encoded size, the format (Pillow's identification from the header, against an allow-list) and the pixel
count from the header (a 20000x20000 PNG is refused before a single row is decoded). Every failure is an
``InputError`` carrying the HTTP status and one line naming the problem.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image

from clipforge.serving.config import ServeConfig


class InputError(ValueError):
    """A bad input: ``status`` is the HTTP status to answer (400, 413, 415, 422)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


def is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


def decode_base64(text: str, config: ServeConfig, where: str) -> bytes:
    """The bytes of a base64 string or a base64 ``data:`` URI."""
    match = _DATA_URI.match(text)
    if match:
        if not match.group("b64"):
            raise InputError(f"{where}: a data URI must be base64 (data:image/png;base64,...)")
        text = text[match.end():]
    if len(text) > config.max_body_bytes * 4 // 3 + 4:
        raise InputError(f"{where}: image larger than {config.max_body_bytes} bytes", 413)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: not valid base64 (send the image bytes base64-encoded, a data: URI"
                         + (", or an http(s) URL" if config.url_hosts else "") + ")") from None


def open_image(data: bytes, config: ServeConfig, where: str) -> Image.Image:
    """An RGB image from encoded bytes, refusing formats not allowed and more pixels than ``max_pixels``."""
    if not data:
        raise InputError(f"{where}: empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[f.upper() for f in config.image_formats])
    except Image.UnidentifiedImageError:
        raise InputError(f"{where}: not an image in an accepted format ({', '.join(config.image_formats)})",
                         415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{where}: too many pixels (limit {config.max_pixels})", 413) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"{where}: cannot read image header: {e}") from None
    width, height = image.size
    if width * height > config.max_pixels:
        raise InputError(f"{where}: image is {width}x{height} = {width * height} pixels, more than the limit of "
                         f"{config.max_pixels}", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise InputError(f"{where}: cannot decode image (truncated or corrupt): {e}") from None
    finally:
        image.close()


def check_text(text: str, config: ServeConfig, where: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{where}: expected a string")
    if len(text) > config.max_text_chars:
        raise InputError(f"{where}: text of {len(text)} characters, more than the limit of {config.max_text_chars}",
                         413)
    return text
