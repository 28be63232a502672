"""clipforge index / search / dedup: sources, exact results, incremental runs, kill -9, unreadable images, index
types and their recall, filters, the Qdrant backend, the Ray and torchrun engines."""
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.models.factory import create_model, save_pretrained
from clipforge.search import Index, IndexConfig, build_index, near_duplicates
from clipforge.search import faiss_index
from clipforge.search.build import load_model
from clipforge.training.shapes import draw_sample, generate_shapes_dataset, sample_attributes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def model_spec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model("tiny-vit"), folder)
    return f"local-dir:{folder}"


@pytest.fixture(scope="module")
def loaded(model_spec):
    return load_model(model_spec)


def write_collection(root, n: int, seed: int = 0, start: int = 0):
    rng = random.Random(seed)
    for i in range(start, start + n):
        sample = sample_attributes(rng)
        folder = root / f"{sample.color}_{sample.shape}"
        folder.mkdir(parents=True, exist_ok=True)
        draw_sample(sample, 48, rng).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def config(spec, **kw):
    return IndexConfig(model=spec, show_progress=False, workers=kw.pop("workers", 0), **kw)


def contents(folder) -> dict:
    """key -> float32 vector of every indexed image."""
    with Index(folder) as index:
        return dict(zip(index.keys, index.vectors(np.arange(len(index)))))


def brute_force(loaded, files, query_vector, k):
    images = torch.stack([loaded.transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        feats = torch.nn.functional.normalize(loaded.encode_image(images), dim=-1).numpy()
    order = np.argsort(-(feats @ query_vector), kind="stable")[:k]
    return feats, order


def test_folder_index_search_is_exact_and_metadata_is_recorded(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 40)
    report = build_index(str(coll), tmp_path / "idx", config(model_spec, dtype="float32"), loaded=loaded)
    assert report["indexed"] == 40 and report["embedded"] == 40 and report["index"]["factory"] == "Flat"
    files = sorted(coll.rglob("*.jpg"))
    with Index(tmp_path / "idx", loaded=loaded) as index:
        text = index.embed_text("a red circle")
        feats, order = brute_force(loaded, files, text, 5)
        hits = index.search_text("a red circle", k=5)
        assert [h.key for h in hits] == [files[i].relative_to(coll).as_posix() for i in order]
        assert np.allclose([h.score for h in hits], (feats @ text)[order], atol=1e-5)
        first = hits[0]
        data = (coll / first.key).read_bytes()
        assert first.metadata["sha1"] == hashlib.sha1(data).hexdigest() and first.metadata["size"] == len(data)
        assert (first.metadata["width"], first.metadata["height"]) == (48, 48)
        self_hit = index.search_image(coll / first.key, k=1)[0]
        assert self_hit.key == first.key and self_hit.score == pytest.approx(1.0, abs=1e-5)
        for hit in index.search_text("a red circle", k=10, prefix="red_"):
            assert hit.key.startswith("red_")
        assert all(h.metadata["width"] == 48 for h in index.search_text("x", k=3, where={"width": "48"}))
        assert index.search_text("x", k=3, prefix="no-such-folder/") == []


def test_incremental_run_processes_only_changes(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 40)
    out = tmp_path / "idx"
    build_index(str(coll), out, config(model_spec), loaded=loaded)
    files = sorted(coll.rglob("*.jpg"))
    write_collection(coll, 4, seed=1, start=1000)  # 10% new
    for f in files[:2]:  # 5% deleted
        f.unlink()
    changed, touched = files[5], files[6]
    Image.new("RGB", (48, 48), (10, 200, 10)).save(changed)
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, new mtime
    report = build_index(str(coll), out, config(model_spec), loaded=loaded)
    assert (report["new"], report["changed"], report["dropped"]) == (4, 2, 2)
    assert (report["embedded"], report["unchanged_bytes"], report["kept"]) == (5, 1, 36)
    keys = set(contents(out))
    assert keys == {f.relative_to(coll).as_posix() for f in coll.rglob("*.jpg")}
    with Index(out, loaded=loaded) as index:
        assert index.search_image(changed, k=1)[0].key == changed.relative_to(coll).as_posix()
    again = build_index(str(coll), out, config(model_spec), loaded=loaded)
    assert again["embedded"] == 0 and again["kept"] == 42 and again["dropped"] == 0


def test_kill_minus_9_then_rerun_gives_the_uninterrupted_index(tmp_path, model_spec):
    coll = write_collection(tmp_path / "coll", 96)
    common = [str(coll), "--model", model_spec, "--part-size", "8", "--batch-size", "4", "--workers", "0",
              "--dtype", "float32"]
    env = {**os.environ, "CLIPFORGE_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "clipforge", "index"]
    subprocess.run(run + common + ["--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(run + common + ["--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed" / "parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.parquet")) if parts.exists() else []) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("*.parquet")))
    assert 3 <= done_before < 12, "the run was not killed mid-way"
    assert not (tmp_path / "killed" / "index").exists()
    with pytest.raises(FileNotFoundError, match="interrupted run"):
        Index(tmp_path / "killed")
    result = subprocess.run(run + common + ["--out", str(tmp_path / "killed")], env=env, capture_output=True,
                            text=True, check=True)
    assert f"{96 - done_before * 8} embedded" in result.stdout
    whole, resumed = contents(tmp_path / "whole"), contents(tmp_path / "killed")
    assert whole.keys() == resumed.keys()
    assert max(np.abs(whole[k] - resumed[k]).max() for k in whole) < 1e-5


def test_unreadable_images_are_reported_not_fatal_and_not_retried(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 10)
    good = next(coll.rglob("*.jpg")).read_bytes()
    (coll / "bad").mkdir()
    (coll / "bad" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (coll / "bad" / "text.png").write_text("not an image")
    report = build_index(str(coll), tmp_path / "idx", config(model_spec), loaded=loaded)
    assert report["failed"] == 2 and report["indexed"] == 10
    assert {u["key"] for u in report["unreadable"]} == {"bad/truncated.jpg", "bad/text.png"}
    assert all("undecodable" in u["error"] for u in report["unreadable"])
    again = build_index(str(coll), tmp_path / "idx", config(model_spec), loaded=loaded)
    assert again["skipped_failed_before"] == 2 and again["embedded"] == 0 and again["failed"] == 0


def test_table_and_shard_sources(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 6)
    files = sorted(coll.rglob("*.jpg"))
    table = tmp_path / "list.csv"
    table.write_text("filepath,title\n" + "".join(f"coll/{f.relative_to(coll).as_posix()},caption {i}\n"
                                                  for i, f in enumerate(files)) + "coll/missing.jpg,gone\n")
    report = build_index(str(table), tmp_path / "t", config(model_spec), loaded=loaded)
    assert report["indexed"] == 6 and report["failed"] == 1 and "missing" in report["unreadable"][0]["error"]
    with Index(tmp_path / "t", loaded=loaded) as index:
        assert sorted(index.metadata["caption"]) == sorted(f"caption {i}" for i in range(6))
    info = generate_shapes_dataset(tmp_path / "shards", n_train=1, n_val=12, shard_size=5)
    report = build_index(info["val"], tmp_path / "s", config(model_spec), loaded=loaded)
    assert report["indexed"] == 12 and report["kind"] == "shards"
    with Index(tmp_path / "s", loaded=loaded) as index:
        assert all(k.startswith("val-00000") and "/val" in k for k in index.keys)
        assert all(c for c in index.metadata["caption"])
        shard = index.metadata["shard"][0]
        assert {h.metadata["shard"] for h in index.search_text("a", k=12, where={"shard": shard})} == {shard}
    assert build_index(info["val"], tmp_path / "s", config(model_spec), loaded=loaded)["kept"] == 12


def _clustered(n, d, seed=0):
    centres = np.random.default_rng(0).standard_normal((40, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq", "opq"])
def test_every_index_type_reaches_the_recall_target(kind):
    n, d = (1500, 32) if kind == "opq" else (4000, 64)  # OPQ's rotation training is the slow part: kept small
    x = _clustered(n, d)
    queries = _clustered(200, d, seed=1)
    choice = faiss_index.choose(n, d, kind)
    index, info = faiss_index.build(x, choice, 0.95, rerank=lambda ids: x[ids])
    searcher = faiss_index.Searcher(index, info["search_value"], (lambda ids: x[ids]) if choice.rerank else None)
    truth = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :10]
    recall = faiss_index.recall_at(searcher.search(queries, 10)[1], truth)
    assert info["tuned_recall_at_10"] >= 0.95 and recall >= 0.95, (kind, info, recall)


def test_the_automatic_choice_follows_size_and_memory():
    assert faiss_index.choose(5_000, 512).factory == "Flat"
    assert faiss_index.choose(500_000, 512).factory == "HNSW32"
    assert faiss_index.choose(10_000_000, 512).factory.startswith("IVF") and "Flat" in \
        faiss_index.choose(10_000_000, 512).factory
    small_budget = faiss_index.choose(10_000_000, 512, memory_budget=2 * 2**30)
    assert small_budget.factory.startswith("OPQ") and small_budget.rerank
    assert small_budget.factory.endswith("PQ64x8np") and 10_000_000 * 64 <= 2 * 2**30
    assert faiss_index.choose(100, 8, "IVF4,Flat").factory == "IVF4,Flat"


def test_qdrant_backend_answers_like_faiss(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 30)
    build_index(str(coll), tmp_path / "f", config(model_spec, dtype="float32"), loaded=loaded)
    q = config(model_spec, dtype="float32", backend="qdrant", qdrant_path=str(tmp_path / "qdrant"))
    build_index(str(coll), tmp_path / "q", q, loaded=loaded)
    with Index(tmp_path / "f", loaded=loaded) as f_index, Index(tmp_path / "q", loaded=loaded) as q_index:
        for prefix in (None, "red_circle"):
            f_hits = f_index.search_text("a blue square", k=5, prefix=prefix)
            q_hits = q_index.search_text("a blue square", k=5, prefix=prefix)
            assert [h.key for h in f_hits] == [h.key for h in q_hits]
            assert np.allclose([h.score for h in f_hits], [h.score for h in q_hits], atol=1e-5)
    victim = next(coll.rglob("*.jpg"))
    victim.unlink()
    from clipforge.search import qdrant
    client = qdrant.connect(path=str(tmp_path / "qdrant"))  # a point left by a crashed run or another writer
    name = report_name = client.get_collections().collections[0].name
    client.upsert(name, points=[qdrant.import_qdrant().models.PointStruct(id=qdrant.point_id("stray"),
                                                                           vector=[0.1] * loaded.embed_dim, payload={"key": "x"})])
    client.close()
    report = build_index(str(coll), tmp_path / "q", q, loaded=loaded)
    assert report["index"]["upserted"] == 0 and report["index"]["deleted"] == 2 and report["indexed"] == 29
    assert report_name.startswith("clipforge-")


def test_near_duplicates_are_grouped(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 12)
    original = sorted(coll.rglob("*.jpg"))[0]
    shutil.copy(original, coll / "copy.jpg")
    Image.open(original).resize((96, 96)).save(coll / "bigger.jpg", quality=95)
    build_index(str(coll), tmp_path / "idx", config(model_spec), loaded=loaded)
    with Index(tmp_path / "idx", loaded=loaded) as index:
        groups = near_duplicates(index, threshold=0.99)
    group = next(g for g in groups if "copy.jpg" in dict(g.members))
    assert {"copy.jpg", "bigger.jpg", original.relative_to(coll).as_posix()} <= set(dict(group.members))
    assert group.keep == "bigger.jpg"  # the largest image is the one to keep


def test_ray_job_embeds_what_the_local_run_embeds(tmp_path, model_spec, loaded):
    pytest.importorskip("ray", reason="Ray is part of the test environment: pip install 'ray[data]'")
    coll = write_collection(tmp_path / "coll", 24)
    build_index(str(coll), tmp_path / "local", config(model_spec, dtype="float32"), loaded=loaded)
    report = build_index(str(coll), tmp_path / "ray", config(model_spec, dtype="float32", engine="ray",
                                                            batch_size=8), loaded=loaded)
    assert report["engine"] == "ray" and report["embedded"] == 24
    local, ray_run = contents(tmp_path / "local"), contents(tmp_path / "ray")
    assert local.keys() == ray_run.keys()
    assert max(np.abs(local[k] - ray_run[k]).max() for k in local) < 1e-5


@pytest.mark.dist
def test_torchrun_ranks_embed_what_one_process_embeds(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 24)
    build_index(str(coll), tmp_path / "one", config(model_spec, dtype="float32"), loaded=loaded)
    env = {**os.environ, "CLIPFORGE_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "clipforge", "index", str(coll), "--model", model_spec, "--out", str(tmp_path / "two"),
           "--dtype", "float32", "--workers", "0"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = {p.name.split("-")[2] for p in (tmp_path / "two" / "parts").glob("*.parquet")}
    assert ranks == {"000", "001"}
    one, two = contents(tmp_path / "one"), contents(tmp_path / "two")
    assert one.keys() == two.keys()
    assert max(np.abs(one[k] - two[k]).max() for k in one) < 1e-5


def test_a_memory_budget_gives_compressed_codes_reranked_from_the_parts(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 60)
    build_index(str(coll), tmp_path / "flat", config(model_spec, dtype="float32"), loaded=loaded)
    report = build_index(str(coll), tmp_path / "pq", config(model_spec, dtype="float32", memory_budget_gb=1e-6),
                         loaded=loaded)
    assert "PQ" in report["index"]["factory"] and report["index"]["rerank"]
    assert "memory budget" in report["index"]["reason"] and "no OPQ rotation" in report["index"]["reason"]
    with Index(tmp_path / "flat", loaded=loaded) as flat, Index(tmp_path / "pq", loaded=loaded) as pq:
        for text in ("a red circle", "a green cross in the top left"):
            exact, compressed = flat.search_text(text, k=5), pq.search_text(text, k=5)
            assert [h.key for h in exact] == [h.key for h in compressed]  # 50 candidates re-ranked exactly
            assert np.allclose([h.score for h in exact], [h.score for h in compressed], atol=1e-6)


def test_selective_filters_on_approximate_indexes_still_return_k_exact_hits(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 120)
    build_index(str(coll), tmp_path / "flat", config(model_spec, dtype="float32"), loaded=loaded)
    build_index(str(coll), tmp_path / "hnsw", config(model_spec, dtype="float32", index_type="hnsw"), loaded=loaded)
    folder = sorted(p.name for p in coll.iterdir())[0]
    with Index(tmp_path / "flat", loaded=loaded) as flat, Index(tmp_path / "hnsw", loaded=loaded) as hnsw:
        want = min(5, sum(k.startswith(folder + "/") for k in flat.keys))
        exact = flat.search_text("a shape", k=5, prefix=folder + "/")
        approx = hnsw.search_text("a shape", k=5, prefix=folder + "/")
        assert len(approx) == want and [h.key for h in approx] == [h.key for h in exact]


def test_a_caption_edit_reaches_the_metadata_without_embedding(tmp_path, model_spec, loaded):
    coll = write_collection(tmp_path / "coll", 4)
    files = sorted(coll.rglob("*.jpg"))
    table = tmp_path / "t.csv"
    table.write_text("filepath,caption\n" + "".join(f"{f},old {i}\n" for i, f in enumerate(files)))
    build_index(str(table), tmp_path / "idx", config(model_spec), loaded=loaded)
    table.write_text("filepath,caption\n" + "".join(f"{f},new {i}\n" for i, f in enumerate(files)))
    report = build_index(str(table), tmp_path / "idx", config(model_spec), loaded=loaded)
    assert report["embedded"] == 0 and report["unchanged_bytes"] == 4
    with Index(tmp_path / "idx", loaded=loaded) as index:
        assert sorted(index.metadata["caption"]) == [f"new {i}" for i in range(4)]


def test_a_second_run_on_the_same_folder_is_refused_while_one_writes(tmp_path, model_spec, loaded):
    import fcntl
    from clipforge.search.build import LOCK
    coll = write_collection(tmp_path / "coll", 3)
    (tmp_path / "idx").mkdir()
    with open(tmp_path / "idx" / LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(FileExistsError, match="another clipforge index run is writing"):
            build_index(str(coll), tmp_path / "idx", config(model_spec), loaded=loaded)
    assert build_index(str(coll), tmp_path / "idx", config(model_spec), loaded=loaded)["indexed"] == 3
