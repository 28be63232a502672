"""Decoding images, with a named cause for every failure.

``read_image`` returns an RGB ``PIL.Image`` or raises ``ImageReadError`` whose ``kind`` says why: ``missing`` (no such
file), ``undecodable`` (not an image, truncated, corrupt) or ``too_large`` (more pixels than Pillow's
decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS``, allows). Pipelines count skips by kind.
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import Callable

from PIL import Image

KINDS = ("missing", "undecodable", "too_large")


class ImageReadError(OSError):
    """An image could not be read; ``kind`` is one of ``KINDS``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _open(data: bytes | str | os.PathLike, convert: Callable[[Image.Image], Image.Image] | None,
          decode: Callable[[Image.Image], Image.Image] | None) -> Image.Image:
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with Image.open(source) as img:
        if decode is not None:
            return decode(img)
        img.load()
        return convert(img) if convert is not None else img.convert("RGB")


def read_image(data: bytes | str | os.PathLike, convert: Callable[[Image.Image], Image.Image] | None = None,
               decode: Callable[[Image.Image], Image.Image] | None = None) -> Image.Image:
    """Decode encoded bytes or read a file; ``convert`` (default: to RGB) runs while the file is open.

    ``decode``, when given, replaces both: it receives the opened image before its pixels are read (to choose
    a reduced-size decode, for instance) and returns the decoded image; its decoding errors are classified
    like the default path's.
    """
    try:
        return _open(data, convert, decode)
    except FileNotFoundError as e:
        raise ImageReadError("missing", f"image file not found: {e.filename or data}") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError("too_large", f"image too large: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError, tarfile.TarError, Image.DecompressionBombWarning) as e:
        # PIL raises all of these for files that are not images, truncated or corrupt
        raise ImageReadError("undecodable", f"cannot decode image: {type(e).__name__}: {e}") from None
