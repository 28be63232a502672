"""The service against the library: same embeddings, rankings, classifications and search results; dynamic batching
that batches, a bounded queue, graceful shutdown, metrics."""
import asyncio
import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.models.factory import create_model_and_transforms, get_tokenizer
from clipforge.serving import ServeConfig, create_app
from clipforge.serving.batching import Batcher, QueueFull
from clipforge.serving.encoders import load_model

from serving_helpers import b64, png_bytes, running

TEXTS = ["a photo of a dog", "a red circle on a blue background", "x", "a cat " * 60]


@pytest.fixture(scope="module")
def library(tiny_spec):
    model, _, preprocess = create_model_and_transforms(tiny_spec)
    model.eval()
    return model, preprocess, get_tokenizer(tiny_spec)


@pytest.fixture(scope="module")
def client(tiny_spec):
    with TestClient(create_app(ServeConfig(model=tiny_spec, device="cpu"))) as c:
        yield c


def _library_images(library, blobs):
    model, preprocess, _ = library
    images = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    with torch.no_grad():
        return F.normalize(model.encode_image(images), dim=-1).numpy()


def _library_texts(library, texts):
    model, _, tokenizer = library
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()


def _vectors(response):
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_text_and_image_embeddings_equal_the_library(client, library):
    blobs = [png_bytes(i) for i in range(3)]
    got = _vectors(client.post("/v1/embeddings", json={"input": TEXTS}))
    np.testing.assert_allclose(got, _library_texts(library, TEXTS), atol=1e-5)
    got = _vectors(client.post("/v1/embeddings", json={"input": [b64(b) for b in blobs], "modality": "image"}))
    np.testing.assert_allclose(got, _library_images(library, blobs), atol=1e-5)
    # typed items mixed in one request, a data: URI, base64 output, and uploads give the same vectors
    mixed = client.post("/v1/embeddings", json={"input": [
        {"type": "image", "image": "data:image/png;base64," + b64(blobs[0])}, {"type": "text", "text": TEXTS[0]}],
        "encoding_format": "base64"})
    assert mixed.status_code == 200, mixed.text
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in mixed.json()["data"]]
    np.testing.assert_allclose(decoded[0], _library_images(library, blobs[:1])[0], atol=1e-5)
    np.testing.assert_allclose(decoded[1], _library_texts(library, TEXTS[:1])[0], atol=1e-5)
    upload = client.post("/v1/embeddings/upload", files=[("files", (f"{i}.png", b, "image/png"))
                                                         for i, b in enumerate(blobs)])
    np.testing.assert_allclose(_vectors(upload), _library_images(library, blobs), atol=1e-5)


def test_openai_shape_truncation_flag_usage_and_raw_features(client, library):
    body = client.post("/v1/embeddings", json={"input": "a dog", "model": "anything"}).json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding" and body["data"][0]["index"] == 0
    assert body["usage"]["prompt_tokens"] == len(library[2].encode("a dog")) + 2  # start and end tokens
    flags = [d["truncated"] for d in client.post("/v1/embeddings", json={"input": TEXTS}).json()["data"]]
    assert flags == [False, False, False, True]
    raw = _vectors(client.post("/v1/embeddings", json={"input": TEXTS[:2], "normalize": False}))
    model, _, tokenizer = library
    with torch.no_grad():
        np.testing.assert_allclose(raw, model.encode_text(tokenizer(TEXTS[:2])).numpy(), atol=1e-5)
    dim = library[0].config.embed_dim
    assert client.post("/v1/embeddings", json={"input": "a", "dimensions": dim}).status_code == 200
    cut = client.post("/v1/embeddings", json={"input": "a", "dimensions": dim // 2})
    assert cut.status_code == 400 and "dimensions" in cut.json()["error"]["message"]


def test_rank_and_classify_follow_the_model(client, library):
    blob = png_bytes(7)
    image = _library_images(library, [blob])[0]
    labels = ["dog", "cat", "car", "tree"]
    templates = ["a photo of a {}.", "a drawing of a {}."]
    ranked = client.post("/v1/rank", json={"query": {"type": "image", "image": b64(blob)}, "candidates": labels})
    assert ranked.status_code == 200, ranked.text
    scores = _library_texts(library, labels) @ image
    results = ranked.json()["results"]
    assert [r["index"] for r in results] == list(np.argsort(-scores, kind="stable"))
    np.testing.assert_allclose([r["score"] for r in results], np.sort(scores)[::-1], atol=1e-5)
    scale = float(library[0].logit_scale.detach().exp())
    expected = np.exp(scale * scores) / np.exp(scale * scores).sum()
    np.testing.assert_allclose(sorted(r["probability"] for r in results), sorted(expected), atol=1e-5)

    classified = client.post("/v1/classify", json={"images": [b64(blob)], "labels": labels, "templates": templates,
                                                   "top_k": 2})
    assert classified.status_code == 200, classified.text
    prompts = _library_texts(library, [t.replace("{}", l) for l in labels for t in templates])
    weights = prompts.reshape(len(labels), len(templates), -1).mean(axis=1)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    probs = np.exp(scale * weights @ image) / np.exp(scale * weights @ image).sum()
    top = classified.json()["results"][0]["labels"]
    assert [t["label"] for t in top] == [labels[i] for i in np.argsort(-probs)[:2]]
    np.testing.assert_allclose([t["probability"] for t in top], np.sort(probs)[::-1][:2], atol=1e-5)
    bad = client.post("/v1/classify", json={"images": [b64(blob)], "labels": labels, "templates": ["no slot"]})
    assert bad.status_code == 400 and "{}" in bad.json()["error"]["message"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(tiny_spec, library):
    config = ServeConfig(model=tiny_spec, device="cpu", max_batch=16, max_wait_ms=50)
    texts = [f"text number {i}" for i in range(24)]
    expected = _library_texts(library, texts)
    with running(create_app(config)) as url:
        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                return await asyncio.gather(*[http.post("/v1/embeddings", json={"input": t}) for t in texts])

        responses = asyncio.run(main())
        metrics = httpx.get(url + "/metrics").text
    got = np.array([r.json()["data"][0]["embedding"] for r in responses], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    batches = _metric(metrics, 'clipforge_batch_size_count{kind="text"}')
    assert batches < len(texts), f"24 concurrent requests ran in {batches} batches: nothing was batched"
    assert _metric(metrics, 'clipforge_inputs_total{kind="text"}') == len(texts)
    assert _metric(metrics, 'clipforge_requests_total{route="/v1/embeddings",status="200"}') == len(texts)
    assert "clipforge_request_seconds_bucket" in metrics and "clipforge_queue_depth" in metrics


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_a_full_queue_answers_503_with_retry_after_and_recovers():
    release = threading.Event()

    def slow(x):
        release.wait(10)
        return x[:, :2].astype(np.float32)

    batcher = Batcher({"text": slow}, max_batch=2, max_wait_s=0.0, max_queue=4)

    async def main():
        first = asyncio.ensure_future(batcher.encode("text", np.ones((2, 3))))  # taken by the worker, blocks
        await asyncio.sleep(0.2)
        queued = [asyncio.ensure_future(batcher.encode("text", np.ones((2, 3)))) for _ in range(2)]  # fills 4
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull) as refused:
            await batcher.encode("text", np.ones((1, 3)))
        assert refused.value.retry_after_s >= 1
        release.set()
        done = await asyncio.gather(first, *queued)
        assert all(d.shape == (2, 2) for d in done)
        return await batcher.encode("text", np.ones((1, 3)))  # the queue drained: accepted again

    assert asyncio.run(main()).shape == (1, 2)
    batcher.close(5)


def test_an_encoder_error_fails_its_batch_only():
    calls = []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return x.astype(np.float32)

    batcher = Batcher({"text": flaky}, max_batch=8, max_wait_s=0.0, max_queue=16)

    async def main():
        with pytest.raises(RuntimeError):
            await batcher.encode("text", np.ones((1, 2)))
        return await batcher.encode("text", np.ones((1, 2)))

    assert asyncio.run(main()).shape == (1, 2)
    batcher.close(5)


def test_shutdown_finishes_requests_in_flight(tiny_spec):
    """SIGTERM-style stop while a batch is being encoded: the request still gets its answer."""
    import uvicorn

    from clipforge.serving.app import create_app as make

    model = load_model(ServeConfig(model=tiny_spec, device="cpu"))
    encode = model.encode_texts
    started = threading.Event()

    def slow(ids):
        started.set()
        time.sleep(1.0)
        return encode(ids)

    model.encode_texts = slow
    from serving_helpers import free_port, wait_ready

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make(ServeConfig(model=tiny_spec), model), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, lambda: None if thread.is_alive() else pytest.fail("the server thread died"))
    result = {}
    requester = threading.Thread(target=lambda: result.update(
        r=httpx.post(url + "/v1/embeddings", json={"input": "in flight"}, timeout=30)))
    requester.start()
    assert started.wait(10)
    server.should_exit = True  # what uvicorn's SIGTERM handler does
    requester.join(30)
    thread.join(30)
    assert result["r"].status_code == 200 and len(result["r"].json()["data"][0]["embedding"]) == model.embed_dim
    assert not thread.is_alive()


@pytest.mark.timeout(300)
def test_the_command_with_two_workers_serves_and_stops_on_sigterm(tiny_spec):
    """`clipforge serve --workers 2` as users start it: both processes answer, SIGTERM stops it with status 0."""
    import os
    import signal
    import subprocess
    import sys

    from serving_helpers import free_port, wait_ready

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clipforge", "serve", tiny_spec, "--port", str(port), "--workers",
                             "2", "--device", "cpu", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "CLIPFORGE_DEBUG": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        def alive():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]

        wait_ready(url, alive)
        with httpx.Client(base_url=url, timeout=30) as http:
            answers = [http.post("/v1/embeddings", json={"input": f"text {i}"}) for i in range(6)]
        assert all(a.status_code == 200 for a in answers)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_the_openai_client_reads_the_embeddings(tiny_spec, library):
    """The OpenAI Python client (which asks for base64 by default) against the live server."""
    from openai import OpenAI

    with running(create_app(ServeConfig(model=tiny_spec, device="cpu", api_keys=("client-key-01",)))) as url:
        client = OpenAI(base_url=url + "/v1", api_key="client-key-01", max_retries=0)
        response = client.embeddings.create(model="clip", input=TEXTS[:2])
        floats = client.embeddings.create(model="clip", input="a photo of a dog", encoding_format="float")
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, _library_texts(library, TEXTS[:2]), atol=1e-5)
    np.testing.assert_allclose(floats.data[0].embedding, got[0], atol=1e-6)
    assert response.usage.prompt_tokens > 0


def test_a_lone_request_does_not_wait_for_a_batch_and_cancelled_work_is_skipped():
    """With nothing else being prepared the worker runs at once, whatever the maximum wait; a request's inputs
    whose future was cancelled (the request failed or left) are not encoded."""
    seen = []
    batcher = Batcher({"text": lambda x: seen.append(len(x)) or x.astype(np.float32)}, max_batch=8,
                      max_wait_s=5.0, max_queue=64)

    async def main():
        start = time.perf_counter()
        await batcher.encode("text", np.ones((1, 2)))
        lone = time.perf_counter() - start
        with batcher.preparing():  # another request is on its way: the first one waits for it
            first = batcher.submit("text", np.ones((1, 2)))
            await asyncio.sleep(0.3)
            assert not first.done()
            cancelled = batcher.submit("text", np.ones((5, 2)))
            cancelled.cancel()
            second = batcher.submit("text", np.ones((2, 2)))
        await asyncio.gather(first, second)
        return lone

    assert asyncio.run(main()) < 1.0
    assert seen == [1, 3]  # the lone input at once; then 1 + 2 together, the cancelled 5 never encoded
    batcher.close(5)
