"""clipforge index / search: retrieval quality, recall and speed of each index type, indexing throughput.

    python benchmarks/bench_search.py                       # everything (trains the quickstart model first)
    python benchmarks/bench_search.py --run runs/quickstart  # use an existing quickstart run
    python benchmarks/bench_search.py --skip-throughput --synthetic 0

1. Retrieval on a generated collection (``--images`` shapes images of 24 known classes, as an image folder) with
   the quickstart model: for each class, the text query "a photo of a {class}." -> precision@10 (share of the top
   10 in the class) through each index type, next to the model's zero-shot top-1 on the same images (the rate a
   perfect index inherits), and recall@10 of each index type against exact search for those text queries.
2. Recall@10 against exact search and queries/s (one query at a time, and a batch of all) of each index type on
   ``--synthetic`` clustered 512-d vectors (default 200,000), queries drawn away from the data as text queries are.
3. Indexing throughput: ``build_index`` on ``--throughput-images`` JPEG files (listing, reading, sha1, decoding in
   DataLoader workers, preprocessing, encoding, parts, index) against a plain loop of ``encode_image`` over the same
   images already decoded and preprocessed (pure model time), same model, same batch size, in the same run.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clipforge.search import Index, IndexConfig, build_index, faiss_index  # noqa: E402
from clipforge.search.build import load_model  # noqa: E402
from clipforge.training.shapes import class_names, draw_sample, sample_attributes  # noqa: E402

TYPES = ("flat", "hnsw", "ivf", "ivfpq", "opq")


def write_shapes(folder: pathlib.Path, n: int, size: int, seed: int = 0) -> dict[str, str]:
    """n shapes images in class folders; returns key -> class name."""
    rng, labels = random.Random(seed), {}
    for i in range(n):
        s = sample_attributes(rng)
        name = f"{s.color} {s.shape}"
        sub = folder / name.replace(" ", "_")
        sub.mkdir(parents=True, exist_ok=True)
        draw_sample(s, size, rng).save(sub / f"{i:06d}.jpg", quality=92)
        labels[f"{name.replace(' ', '_')}/{i:06d}.jpg"] = name
    return labels


def _quickstart(run: pathlib.Path | None, steps: int, scratch: pathlib.Path) -> pathlib.Path:
    if run is None:
        from clipforge.cli.main import main

        run = scratch / "quickstart"
        main(["quickstart", "--workdir", str(run), "--steps", str(steps)])
    return run


def retrieval(run: pathlib.Path, n: int, scratch: pathlib.Path) -> dict:
    spec = f"local-dir:{run / 'run' / 'model'}"
    loaded = load_model(spec)
    labels = write_shapes(scratch / "coll", n, 64, seed=123)
    classes = class_names()
    texts = [f"a photo of a {c}." for c in classes]
    with torch.no_grad():
        text = torch.nn.functional.normalize(loaded.encode_text(loaded.tokenize(texts)), dim=-1).numpy()
    rows = {}
    for kind in TYPES:
        out = scratch / f"idx-{kind}"
        build_index(str(scratch / "coll"), out, IndexConfig(model=spec, index_type=kind, show_progress=False),
                    loaded=loaded)
        with Index(out, loaded=loaded) as index:
            if kind == "flat":
                vectors = index.vectors(np.arange(len(index)))
                predicted = np.argmax(vectors @ text.T, axis=1)
                top1 = float(np.mean([classes[p] == labels[k] for p, k in zip(predicted, index.keys)]))
                exact = {c: [h.key for h in index.search_vector(t, 10)] for c, t in zip(classes, text)}
            found = {c: [h.key for h in index.search_vector(t, 10)] for c, t in zip(classes, text)}
            precision = float(np.mean([np.mean([labels[k] == c for k in keys]) for c, keys in found.items()]))
            recall = float(np.mean([len(set(found[c]) & set(exact[c])) / 10 for c in classes]))
            rows[kind] = {"factory": index.info["factory"], "precision@10": round(precision, 3),
                          "recall@10_vs_exact": round(recall, 3), "search_value": index.info.get("search_value")}
    return {"images": n, "zero_shot_top1": round(top1, 3), "types": rows}


def _clustered(n: int, d: int, seed: int, clusters: int = 1000) -> np.ndarray:
    centres = np.random.default_rng(0).standard_normal((clusters, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ann(n: int, d: int = 512, queries: int = 500) -> list[dict]:
    x = _clustered(n, d, seed=1)
    q = _clustered(queries, d, seed=2)
    noise = np.random.default_rng(3).standard_normal(q.shape).astype(np.float32)
    q = q + noise / np.linalg.norm(noise, axis=1, keepdims=True)  # away from the data, like text queries
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = faiss_index.exact_top_k(q, x, 10)
    out = []
    for kind in TYPES:
        choice = faiss_index.choose(n, d, kind)
        start = time.perf_counter()
        index, info = faiss_index.build(x, choice, 0.95, rerank=lambda ids: x[ids])
        build_s = time.perf_counter() - start
        searcher = faiss_index.Searcher(index, info["search_value"], (lambda ids: x[ids]) if choice.rerank else None)
        start = time.perf_counter()
        found = np.concatenate([searcher.search(q[i:i + 1], 10)[1] for i in range(len(q))])
        single = len(q) / (time.perf_counter() - start)
        start = time.perf_counter()
        searcher.search(q, 10)
        batch = len(q) / (time.perf_counter() - start)
        out.append({"type": kind, "factory": choice.factory, "param": info["search_value"],
                    "recall@10": round(faiss_index.recall_at(found, truth), 3), "qps_single": round(single),
                    "qps_batch": round(batch), "build_s": round(build_s, 1),
                    "bytes_per_vector": round(_index_bytes(index) / n, 1)})
    return out


def _index_bytes(index) -> int:
    import faiss

    return len(faiss.serialize_index(index))


def throughput(model: str, n: int, batch: int, scratch: pathlib.Path, workers: int | None) -> dict:
    folder = scratch / "throughput"
    write_shapes(folder, n, 256, seed=7)
    loaded = load_model(model)
    files = sorted(folder.rglob("*.jpg"))
    pixels = torch.stack([loaded.transform(Image.open(f).convert("RGB")) for f in files])
    loaded.encode_image(pixels[:batch])  # warm-up
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n, batch):
            loaded.encode_image(pixels[i:i + batch])
    model_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    build_index(str(folder), scratch / "throughput-idx", IndexConfig(model=model, batch_size=batch, workers=workers,
                                                                     show_progress=False), loaded=loaded)
    pipeline_rate = n / (time.perf_counter() - start)
    return {"model": model, "images": n, "batch": batch, "model_loop_img_s": round(model_rate, 1),
            "index_img_s": round(pipeline_rate, 1), "ratio": round(pipeline_rate / model_rate, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=pathlib.Path, default=None, help="an existing quickstart workdir")
    parser.add_argument("--steps", type=int, default=600, help="quickstart steps when --run is not given")
    parser.add_argument("--images", type=int, default=3000, help="collection size for the retrieval table")
    parser.add_argument("--synthetic", type=int, default=200_000, help="vectors for the ANN table (0: skip)")
    parser.add_argument("--throughput-model", nargs="+", default=["ViT-B-32"])
    parser.add_argument("--throughput-images", type=int, default=384)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        scratch = pathlib.Path(tmp)
        if not args.skip_throughput:
            results["throughput"] = [throughput(m, args.throughput_images, 64, scratch / m, args.workers)
                                     for m in args.throughput_model]
        if not args.skip_retrieval:
            results["retrieval"] = retrieval(_quickstart(args.run, args.steps, scratch), args.images, scratch)
        if args.synthetic:
            results["ann"] = ann(args.synthetic)
    print(json.dumps(results, indent=1))
    for r in results.get("ann", []):
        print(f"| {r['type']} | {r['factory']} | {r['param']} | {r['recall@10']} | {r['qps_single']} | "
              f"{r['qps_batch']} | {r['build_s']} | {r['bytes_per_vector']} |")


if __name__ == "__main__":
    main()
