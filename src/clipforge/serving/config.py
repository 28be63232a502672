"""``ServeConfig``: every setting of the service, with its reason, checked once before anything is loaded."""
from __future__ import annotations

import dataclasses

from clipforge.config import ConfigError

RUNTIMES = ("torch", "onnx")
# Formats Pillow decodes that a client may send. Not EPS/PSD/XPM and the like: rarely useful, large attack surface.
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@dataclasses.dataclass
class ServeConfig:
    model: str = ""                  # a name create_model takes (MODEL, MODEL::TAG, hf-hub:, a folder) or an ONNX bundle
    runtime: str = "auto"            # torch | onnx | auto (onnx when `model` is a bundle folder)
    precision: str = "fp32"          # torch runtime only
    device: str = "auto"             # torch: auto (cuda when present), cpu, cuda, cuda:1; onnx: auto or a provider
    variant: str | None = None       # onnx: the bundle's variant (fp32, int8, fp16); default: the bundle's default
    index: str | None = None         # an index folder (clipforge index) to serve /v1/search and the search page
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1                 # processes, each with its own model; see README "Serving" for scaling out
    threads: int | None = None       # intra-op threads per process (default: cores / workers)
    # dynamic batching
    max_batch: int = 32              # inputs encoded together at most
    max_wait_ms: float = 5.0         # how long the first queued input waits for others
    max_queue: int = 1024            # inputs waiting at most; beyond, 503 + Retry-After
    # limits
    max_body_bytes: int = 32 << 20   # request bodies (JSON with base64 images, uploads)
    max_inputs: int = 256            # inputs in one request
    max_pixels: int = 40_000_000     # width x height of one image (decompression bombs), checked before decoding
    max_text_chars: int = 20_000     # characters of one text (tokens beyond the context are cut and flagged)
    image_formats: tuple[str, ...] = DEFAULT_FORMATS
    max_labels: int = 1000           # /v1/classify class names
    # URLs: off unless hosts are listed
    url_hosts: tuple[str, ...] = ()  # hostnames images may be fetched from ("*.example.com" allowed)
    url_max_bytes: int = 16 << 20
    url_timeout_s: float = 10.0
    # access
    api_keys: tuple[str, ...] = ()   # when set, every /v1 request needs `Authorization: Bearer K` or `X-API-Key: K`
    cors_origins: tuple[str, ...] = ()
    thumbnail_size: int = 256

    def check(self) -> None:
        """Raise ``ConfigError`` naming the first bad value and what it may be."""
        if not self.model:
            raise ConfigError("no model: give a name create_model takes or an ONNX bundle folder")
        if self.runtime not in RUNTIMES + ("auto",):
            raise ConfigError(f"--runtime must be one of torch, onnx, auto; got {self.runtime!r}")
        positive = {"port": self.port, "workers": self.workers, "max_batch": self.max_batch,
                    "max_queue": self.max_queue, "max_body_bytes": self.max_body_bytes,
                    "max_inputs": self.max_inputs, "max_pixels": self.max_pixels,
                    "max_text_chars": self.max_text_chars, "max_labels": self.max_labels,
                    "url_max_bytes": self.url_max_bytes, "thumbnail_size": self.thumbnail_size}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.port > 65535:
            raise ConfigError(f"--port must be at most 65535, got {self.port}")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if not self.url_timeout_s > 0:
            raise ConfigError(f"--url-timeout-s must be > 0, got {self.url_timeout_s}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"--threads must be a positive integer, got {self.threads!r}")
        if self.max_queue < max(self.max_batch, self.max_inputs):
            raise ConfigError(f"--max-queue ({self.max_queue}) must be at least --max-batch ({self.max_batch}) and "
                              f"--max-inputs ({self.max_inputs})")
        if self.max_queue < self.max_batch:
            raise ConfigError(f"--max-queue ({self.max_queue}) must be at least --max-batch ({self.max_batch})")
        unknown = [f for f in self.image_formats if f.upper() not in _pillow_formats()]
        if unknown:
            raise ConfigError(f"image formats {unknown} are not formats Pillow decodes; use names like JPEG, PNG, WEBP")
        if any(not key or len(key) < 8 for key in self.api_keys):
            raise ConfigError("API keys must be at least 8 characters (one per line in the key file)")


def _pillow_formats() -> set[str]:
    from PIL import Image

    Image.init()
    return set(Image.OPEN)
