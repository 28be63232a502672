"""Downloads: URL files from a loopback HTTP server, hub files from a cache laid out like huggingface_hub's,
offline mode with every network call made to fail loudly."""
import hashlib
import http.server
import threading

import pytest

import huggingface_hub
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

from clipforge.models._download import (
    HubRepoNotFoundError, HubUnreachableError, WeightsIntegrityError, WeightsNotCachedError, hub_file, is_offline,
    url_file,
)

PAYLOAD = b"clipforge weights " * 1000
REVISION = "0123456789abcdef0123456789abcdef01234567"


class _Server:
    """Serves ``routes`` (path -> (body, declared length or None)) on 127.0.0.1 and counts the requests."""

    def __init__(self, routes):
        self.routes, self.hits = routes, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits.append(self.path)
                if self.path not in owner.routes:
                    self.send_error(404)
                    return
                body, declared = owner.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if declared is None else declared))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server({"/w/model-good.pt": (PAYLOAD, None), "/w/cut.pt": (PAYLOAD[:100], len(PAYLOAD))})
    yield srv
    srv.close()


def make_hub_cache(cache_dir, repo_id, files, revision=REVISION, ref="main"):
    """A cache folder laid out as huggingface_hub writes it: models--org--name/{refs,snapshots/<rev>}."""
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    for name, data in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)
    if ref:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(revision)
    return snapshot


def _cache_files(cache_dir):
    return sorted(p.name for p in cache_dir.rglob("*") if p.is_file())


def test_url_download_is_verified_and_cached(tmp_path, server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    full = hashlib.sha256(PAYLOAD).hexdigest()
    path = url_file(server.url("/w/model-good.pt"), sha256=full, cache_dir=tmp_path)
    assert path == tmp_path / "model-good.pt" and path.read_bytes() == PAYLOAD
    assert _cache_files(tmp_path) == ["model-good.pt"]
    again = url_file(server.url("/w/model-good.pt"), sha256=full[:8], cache_dir=tmp_path)  # a prefix also verifies
    assert again == path and server.hits == ["/w/model-good.pt"]


def test_hash_mismatch_leaves_no_file(tmp_path, server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    wrong = "0" * 64
    with pytest.raises(WeightsIntegrityError) as info:
        url_file(server.url("/w/model-good.pt"), sha256=wrong, cache_dir=tmp_path)
    message = str(info.value)
    assert wrong in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert _cache_files(tmp_path) == []


def test_truncated_download_leaves_no_file(tmp_path, server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(WeightsIntegrityError, match="ended before"):
        url_file(server.url("/w/cut.pt"), cache_dir=tmp_path)
    assert _cache_files(tmp_path) == []


def test_http_error_is_clear(tmp_path, server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConnectionError, match="could not download .*missing.pt"):
        url_file(server.url("/w/missing.pt"), cache_dir=tmp_path)
    assert _cache_files(tmp_path) == []


def test_corrupt_cached_file_is_replaced(tmp_path, server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "model-good.pt").write_bytes(b"stale")
    path = url_file(server.url("/w/model-good.pt"), sha256=hashlib.sha256(PAYLOAD).hexdigest(), cache_dir=tmp_path)
    assert path.read_bytes() == PAYLOAD and server.hits == ["/w/model-good.pt"]


def test_offline_url_uses_cache_and_never_connects(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = "https://example.invalid/clip/model-good.pt"
    with pytest.raises(WeightsNotCachedError) as info:
        url_file(url, cache_dir=tmp_path)
    assert url in str(info.value) and str(tmp_path / "model-good.pt") in str(info.value)
    (tmp_path / "model-good.pt").write_bytes(PAYLOAD)
    assert url_file(url, sha256=hashlib.sha256(PAYLOAD).hexdigest(), cache_dir=tmp_path).read_bytes() == PAYLOAD


def test_offline_cached_file_with_wrong_hash_is_removed(tmp_path, no_network):
    (tmp_path / "m.pt").write_bytes(b"corrupt")
    with pytest.raises(WeightsIntegrityError, match="removed"):
        url_file("https://example.invalid/m.pt", sha256="ab" * 32, cache_dir=tmp_path, local_files_only=True)
    assert _cache_files(tmp_path) == []


def test_is_offline_reads_the_environment_at_call_time(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not is_offline() and is_offline(local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_offline()


@pytest.mark.parametrize("how", ["local_files_only", "env"])
def test_hub_file_from_cache_without_network(tmp_path, no_network, monkeypatch, how):
    snapshot = make_hub_cache(tmp_path, "laion/tiny", {"open_clip_pytorch_model.bin": b"bin"})
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    path = hub_file("laion/tiny", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
                    cache_dir=tmp_path, local_files_only=(how == "local_files_only"))
    assert path == snapshot / "open_clip_pytorch_model.bin"


def test_hub_file_pinned_revision(tmp_path, no_network):
    other = "f" * 40
    make_hub_cache(tmp_path, "org/repo", {"w.bin": b"main"})
    make_hub_cache(tmp_path, "org/repo", {"w.bin": b"old"}, revision=other, ref=None)
    assert hub_file("org/repo", ["w.bin"], cache_dir=tmp_path, local_files_only=True).read_bytes() == b"main"
    pinned = hub_file("org/repo", ["w.bin"], revision=other, cache_dir=tmp_path, local_files_only=True)
    assert pinned.read_bytes() == b"old"


def test_hub_file_offline_not_cached_names_repo_and_cache(tmp_path, no_network):
    with pytest.raises(WeightsNotCachedError) as info:
        hub_file("org/absent", ["open_clip_model.safetensors"], cache_dir=tmp_path, local_files_only=True)
    message = str(info.value)
    assert "org/absent" in message and "open_clip_model.safetensors" in message and str(tmp_path) in message
    assert "HF_HUB_OFFLINE" in message


def test_online_hub_download_tries_names_in_order(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["revision"], kwargs["cache_dir"]))
        if filename.endswith(".safetensors"):
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    path = hub_file("org/repo", ["a.safetensors", "b.bin"], revision="v1", cache_dir=tmp_path)
    assert path == tmp_path / "b.bin"
    assert calls == [("org/repo", "a.safetensors", "v1", tmp_path), ("org/repo", "b.bin", "v1", tmp_path)]
    with pytest.raises(FileNotFoundError, match="has none of the files"):
        hub_file("org/repo", ["only.safetensors"], cache_dir=tmp_path)


def test_online_hub_errors_are_specific(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("connection refused and nothing cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(HubUnreachableError, match="could not reach .*org/repo"):
        hub_file("org/repo", ["w.bin"], cache_dir=tmp_path)

    def no_repo(repo_id, filename, **kwargs):
        raise RepositoryNotFoundError.__new__(RepositoryNotFoundError)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_repo)
    with pytest.raises(HubRepoNotFoundError, match="'org/repo' does not exist"):
        hub_file("org/repo", ["w.bin"], cache_dir=tmp_path)
