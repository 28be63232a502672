"""Helpers of the service tests: image bytes, shapes collections, a real uvicorn server on a free loopback port (in a
thread of the test process). A module with its own name: `conftest` is ambiguous when xdist workers import several."""
import base64
import contextlib
import io
import random
import socket
import threading
import time

import httpx
import numpy as np
from PIL import Image



def png_bytes(seed: int = 0, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, alive, seconds: float = 120) -> None:
    """Poll ``url``/readyz until 200; ``alive()`` raises when the server died meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        alive()
        time.sleep(0.05)
    raise AssertionError(f"the server at {url} did not become ready in {seconds} s")


def write_shapes(folder, n: int, size: int, seed: int = 0, by_class: bool = False, ext: str = "jpg") -> None:
    """``n`` shapes images (``color-shape-i``), in class folders when ``by_class``."""
    from clipforge.training.shapes import draw_sample, sample_attributes

    rng = random.Random(seed)
    for i in range(n):
        sample = sample_attributes(rng)
        where = folder / f"{sample.color}_{sample.shape}" if by_class else folder
        where.mkdir(parents=True, exist_ok=True)
        draw_sample(sample, size, rng).save(where / f"{sample.color}-{sample.shape}-{i:03d}.{ext}")


@contextlib.contextmanager
def running(app, port: int | None = None):
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yields the base URL; stops it gracefully."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def alive():
        assert thread.is_alive(), "the server thread died while starting"

    wait_ready(url, alive)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
