"""Bad requests get a 4xx JSON error naming the problem and the server keeps serving; bad command lines get one line
and exit 2; image URLs reach only allowed hosts on public addresses."""
import http.server
import socket
import struct
import threading
import time
import zlib

import httpx
import pytest
import torch

from cli_checks import one_line_failures
from clipforge.models.factory import create_model, save_pretrained
from clipforge.search import IndexConfig, build_index
from clipforge.serving import ServeConfig, create_app
from clipforge.serving import urls
from clipforge.serving.inputs import InputError

from serving_helpers import b64, png_bytes, running

KEY = "secret-key-0123"


def huge_png(width=20000, height=20000) -> bytes:
    """A valid PNG header claiming width x height (a few hundred bytes: a decompression bomb's shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" + b"\x00" * width * 3
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * 2)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def server(tiny_spec):
    config = ServeConfig(model=tiny_spec, device="cpu", api_keys=(KEY,), max_body_bytes=1 << 20, max_inputs=8,
                         max_text_chars=1000, url_hosts=("localhost", "127.0.0.1", "*.internal"))
    with running(create_app(config)) as url:
        yield url


def _post(url, path, body=None, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=30, **kw)


def test_every_bad_request_is_a_4xx_and_the_server_keeps_serving(server):
    png = png_bytes(1)
    image = lambda data: {"input": [data], "modality": "image"}  # noqa: E731
    cases = [
        ("malformed base64", "/v1/embeddings", image("not*base64!"), 400),
        ("not an image", "/v1/embeddings", image(b64(b"hello world, no pixels here")), 415),
        ("truncated image", "/v1/embeddings", image(b64(png[: len(png) // 2])), 400),
        ("20000x20000 PNG", "/v1/embeddings", image(b64(huge_png())), 413),
        ("empty image", "/v1/embeddings", image(""), 400),
        ("data URI not base64", "/v1/embeddings", image("data:image/png,abc"), 400),
        ("loopback URL", "/v1/embeddings", image(f"{server}/healthz"), 400),
        ("localhost URL", "/v1/embeddings", image("http://localhost:1/x.png"), 400),
        ("host not allowed", "/v1/embeddings", image("http://10.0.0.1/x.png"), 400),
        ("metadata endpoint", "/v1/embeddings", image("http://169.254.169.254/latest/meta-data/"), 400),
        ("file URL", "/v1/embeddings", image("file:///etc/passwd"), 400),
        ("too many inputs", "/v1/embeddings", {"input": ["a"] * 9}, 413),
        ("text too long", "/v1/embeddings", {"input": "a" * 1001}, 413),
        ("empty input list", "/v1/embeddings", {"input": []}, 400),
        ("token ids", "/v1/embeddings", {"input": [1, 2, 3]}, 422),
        ("unknown field", "/v1/embeddings", {"input": "a", "colour": 1}, 422),
        ("bad encoding", "/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 422),
        ("no candidates", "/v1/rank", {"query": "a", "candidates": []}, 422),
        ("bad typed item", "/v1/rank", {"query": {"type": "video", "video": "x"}, "candidates": ["a"]}, 422),
        ("duplicate labels", "/v1/classify", {"images": [b64(png)], "labels": ["a", "a"]}, 400),
        ("no index", "/v1/search", {"query": "a"}, 404),
    ]
    failures = []
    for name, path, body, status in cases:
        response = _post(server, path, body)
        error = response.json().get("error", {}) if response.headers.get("content-type", "").startswith(
            "application/json") else {}
        if response.status_code != status or not error.get("message") or "\n" in error["message"]:
            failures.append(f"{name}: {response.status_code} {response.text[:200]}")
        good = _post(server, "/v1/embeddings", {"input": "still serving"})
        if good.status_code != 200:
            failures.append(f"after {name}: the next good request got {good.status_code}")
    assert not failures, "\n".join(failures)


def test_bodies_over_the_limit_keys_and_methods(server):
    big = _post(server, "/v1/embeddings", {"input": "x" * (2 << 20)})
    assert big.status_code == 413 and "limit" in big.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is counted on the stream
        for _ in range(40):
            yield b" " * 65536

    streamed = httpx.post(server + "/v1/embeddings", content=chunks(), timeout=30,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert httpx.post(server + "/v1/embeddings", content=b"{not json", timeout=30,
                      headers={"X-API-Key": KEY, "Content-Type": "application/json"}).status_code == 422
    assert _post(server, "/v1/embeddings", {"input": "a"}, key=None).status_code == 401
    wrong = _post(server, "/v1/embeddings", {"input": "a"}, key=KEY[:-1] + "X")
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
    assert httpx.post(server + "/v1/embeddings", json={"input": "a"}, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(server + "/healthz").status_code == 200  # health and metrics need no key
    assert httpx.get(server + "/metrics").status_code == 200
    assert httpx.get(server + "/v1/embeddings").status_code == 405
    assert httpx.get(server + "/nothing-here").json()["error"]["code"] == 404
    upload = httpx.post(server + "/v1/embeddings/upload", headers={"X-API-Key": KEY},
                        files={"files": ("big.bin", b"\0" * (2 << 20))})
    assert upload.status_code == 413
    assert _post(server, "/v1/embeddings", {"input": "and still serving"}).status_code == 200


def test_urls_are_off_by_default(tiny_spec):
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServeConfig(model=tiny_spec, device="cpu"))) as c:
        r = c.post("/v1/embeddings", json={"input": ["https://example.com/a.png"], "modality": "image"})
        assert r.status_code == 400 and "not enabled" in r.json()["error"]["message"]


def test_address_rules():
    for address in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::1",
                    "::ffff:127.0.0.1", "fe80::1", "fc00::1", "224.0.0.1", "100.64.0.1"]:
        assert not urls.public_address(address), address
    for address in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"]:
        assert urls.public_address(address), address
    assert urls.host_allowed("img.internal", ("*.internal",)) and not urls.host_allowed("internal.evil", ("*.internal",))


class _Files(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/")
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                time.sleep(0.1)
        else:
            body = png_bytes(2) if self.path == "/a.png" else b"y" * 5000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_fetching_follows_the_limits():
    """The fetch path itself, against a loopback server the test allows explicitly (the service never would)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_port}"
    allow_all = lambda address: True  # noqa: E731
    try:
        assert urls.fetch(base + "/a.png", ("127.0.0.1",), 1 << 20, 5, allow_all) == png_bytes(2)
        with pytest.raises(InputError, match="non-public"):
            urls.fetch(base + "/a.png", ("127.0.0.1",), 1 << 20, 5)
        with pytest.raises(InputError, match="limit") as big:
            urls.fetch(base + "/big", ("127.0.0.1",), 1000, 5, allow_all)
        assert big.value.status == 413
        with pytest.raises(InputError, match="redirects are not followed"):
            urls.fetch(base + "/redirect", ("127.0.0.1",), 1000, 5, allow_all)
        with pytest.raises(InputError, match="longer than"):
            urls.fetch(base + "/slow", ("127.0.0.1",), 1 << 20, 1.0, allow_all)
        with pytest.raises(InputError, match="allow-list"):
            urls.fetch(base + "/a.png", ("example.com",), 1000, 5, allow_all)
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def bad_cli(tmp_path_factory, tiny_spec):
    root = tmp_path_factory.mktemp("serve_cli")
    other = create_model("tiny-vit")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    save_pretrained(other, root / "other")
    (root / "coll").mkdir()
    (root / "coll" / "a.png").write_bytes(png_bytes(0))
    (root / "coll" / "b.png").write_bytes(png_bytes(1))
    build_index(str(root / "coll"), root / "idx", IndexConfig(model=tiny_spec, show_progress=False, workers=0))
    (root / "empty_keys").write_text("\n# nothing\n")
    return root


@pytest.mark.timeout(300)
def test_bad_command_lines_are_one_line(bad_cli, tiny_spec, capsys):
    r = bad_cli
    cases = [
        (["serve", str(r / "missing-model")], "missing-model", []),
        (["serve", tiny_spec, "--runtime", "onnx"], "ONNX bundle", []),
        (["serve", tiny_spec, "--port", "70000"], "--port", []),
        (["serve", tiny_spec, "--max-batch", "0"], "--max-batch", []),
        (["serve", tiny_spec, "--max-queue", "4"], "--max-queue", []),
        (["serve", tiny_spec, "--api-key-file", str(r / "empty_keys")], "no keys", []),
        (["serve", tiny_spec, "--api-key-file", str(r / "nope.txt")], "nope.txt", []),
        (["serve", tiny_spec, "--image-formats", "JPEG,FOO"], "FOO", []),
        (["serve", tiny_spec, "--variant", "int8"], "--variant", []),
        (["serve", tiny_spec, "--index", str(r / "coll")], "no index", []),
        (["serve", str(r / "other"), "--index", str(r / "idx")], "indexed with model", []),
        (["serve", tiny_spec, "--host", "no-such-host.invalid"], "--host", []),
    ]
    with socket.socket() as busy:  # a port something else listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append((["serve", tiny_spec, "--port", str(busy.getsockname()[1])], "cannot listen", []))
        assert not one_line_failures(cases, capsys, status=2)


def test_cors_is_off_unless_origins_are_given(tiny_spec):
    from fastapi.testclient import TestClient

    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(ServeConfig(model=tiny_spec, device="cpu"))) as c:
        assert "access-control-allow-origin" not in c.options("/v1/embeddings", headers=preflight).headers
        assert "access-control-allow-origin" not in c.post("/v1/embeddings", json={"input": "a"},
                                                           headers={"Origin": "https://app.example"}).headers
    config = ServeConfig(model=tiny_spec, device="cpu", cors_origins=("https://app.example",))
    with TestClient(create_app(config)) as c:
        allowed = c.options("/v1/embeddings", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = c.options("/v1/embeddings", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
