"""/v1/search, thumbnails and the ONNX runtime: the service answers what the library answers."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.export.onnx import OnnxExportConfig, export_onnx
from clipforge.models.factory import create_model_and_transforms, get_tokenizer
from clipforge.search import Index, IndexConfig, build_index
from clipforge.serving import ServeConfig, create_app
from clipforge.training.shapes import generate_shapes_dataset

from serving_helpers import b64, png_bytes, write_shapes


@pytest.fixture(scope="module")
def indexed(tiny_spec, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_search")
    write_shapes(root / "coll", 40, 300, by_class=True)
    config = IndexConfig(model=tiny_spec, show_progress=False, workers=0)
    build_index(str(root / "coll"), root / "idx", config)
    info = generate_shapes_dataset(root / "shards", n_train=1, n_val=8, shard_size=4)
    build_index(info["val"], root / "sidx", config)
    return root


@pytest.fixture(scope="module")
def client(tiny_spec, indexed):
    with TestClient(create_app(ServeConfig(model=tiny_spec, device="cpu", index=str(indexed / "idx"),
                                           thumbnail_size=64))) as c:
        yield c


def test_text_vector_and_like_queries_equal_the_library(client, indexed, tiny_spec):
    with Index(indexed / "idx") as index:
        expected = index.search_text("a red circle", k=7)
        got = client.post("/v1/search", json={"query": "a red circle", "k": 7})
        assert got.status_code == 200, got.text
        results = got.json()["results"]
        assert [r["key"] for r in results] == [h.key for h in expected]
        np.testing.assert_allclose([r["score"] for r in results], [h.score for h in expected], atol=1e-5)
        assert results[0]["metadata"]["width"] == 300 and results[0]["thumbnail"] == f"/v1/thumbnails/{results[0]['row']}"
        vector = index.vectors([5])[0]
        by_vector = client.post("/v1/search", json={"vector": vector.tolist(), "k": 3}).json()["results"]
        assert by_vector[0]["row"] == 5 and by_vector[0]["score"] == pytest.approx(1.0, abs=1e-3)
        like = client.post("/v1/search", json={"like": 5, "k": 3}).json()["results"]
        assert [r["key"] for r in like] == [r["key"] for r in by_vector]
        prefix = index.keys[0].split("/")[0] + "/"
        filtered = client.post("/v1/search", json={"query": "x", "k": 40, "prefix": prefix}).json()["results"]
        assert filtered and all(r["key"].startswith(prefix) for r in filtered)
        where = client.post("/v1/search", json={"query": "x", "where": {"width": 300}}).json()["results"]
        assert len(where) == 10
    image = client.post("/v1/search/upload", files={"file": ("q.png", png_bytes(3), "image/png")}, data={"k": "4"})
    assert image.status_code == 200 and len(image.json()["results"]) == 4
    typed = client.post("/v1/search", json={"query": {"type": "image", "image": b64(png_bytes(3))}, "k": 4})
    assert [r["key"] for r in typed.json()["results"]] == [r["key"] for r in image.json()["results"]]


def test_bad_search_requests_are_4xx(client):
    cases = [({"query": "x", "where": {"nope": 1}}, 400), ({"vector": [0.1, 0.2]}, 400), ({"k": 3}, 400),
             ({"query": "x", "vector": [0.0]}, 400), ({"like": 10_000}, 404), ({"query": "x", "k": 0}, 422),
             ({"query": "x", "where": {"width": "wide"}}, 400)]
    for body, status in cases:
        response = client.post("/v1/search", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["message"]
    assert client.post("/v1/search", json={"query": "ok"}).status_code == 200


def test_thumbnails_come_only_from_indexed_images(client, indexed):
    with Index(indexed / "idx") as index:
        n = len(index)
    thumb = client.get("/v1/thumbnails/3")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 64
    for path in [f"/v1/thumbnails/{n}", "/v1/thumbnails/-1", "/v1/thumbnails/..%2F..%2Fetc%2Fpasswd",
                 "/v1/thumbnails/../../etc/passwd", "/v1/thumbnails/%2Fetc%2Fpasswd", "/v1/thumbnails/x"]:
        response = client.get(path)
        assert response.status_code in (404, 422), (path, response.status_code)
        assert b"root:" not in response.content


def test_thumbnails_from_shards_and_the_page(tiny_spec, indexed):
    with TestClient(create_app(ServeConfig(model=tiny_spec, device="cpu", index=str(indexed / "sidx")))) as c:
        thumb = c.get("/v1/thumbnails/0")
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size[0] > 0
        page = c.get("/")
        assert page.status_code == 200 and "/v1/search" in page.text and "<form" in page.text


@pytest.fixture(scope="module")
def bundle(tiny_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_bundle") / "bundle"
    export_onnx(f"local-dir:{tiny_spec}", out, OnnxExportConfig())
    return out


def test_onnx_runtime_matches_the_library_and_serves_the_torch_index(bundle, tiny_spec, indexed):
    model, _, preprocess = create_model_and_transforms(tiny_spec)
    tokenizer = get_tokenizer(tiny_spec)
    texts = ["a photo of a dog", "a blue square"]
    blobs = [png_bytes(i) for i in range(3)]
    with torch.no_grad():
        text_ref = F.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()
        images = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
        image_ref = F.normalize(model.encode_image(images), dim=-1).numpy()
    config = ServeConfig(model=str(bundle), device="cpu", index=str(indexed / "idx"))
    with TestClient(create_app(config)) as c:
        assert c.get("/readyz").json()["runtime"] == "onnx"
        got = c.post("/v1/embeddings", json={"input": texts}).json()["data"]
        np.testing.assert_allclose([d["embedding"] for d in got], text_ref, atol=1e-4)
        got = c.post("/v1/embeddings", json={"input": [b64(b) for b in blobs], "modality": "image"}).json()["data"]
        np.testing.assert_allclose([d["embedding"] for d in got], image_ref, atol=1e-4)
        hits = c.post("/v1/search", json={"query": "a red circle", "k": 5}).json()["results"]
    with Index(indexed / "idx") as index:
        assert [h["key"] for h in hits] == [h.key for h in index.search_text("a red circle", k=5)]
