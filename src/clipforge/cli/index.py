"""``clipforge index SRC --model MODEL --out DIR``: embed an image collection into a searchable index.

SRC is a folder of images (recursive), a CSV/TSV with a path column (and optionally a caption column) or WebDataset
shards. Re-running updates the index: only new or changed images are embedded, deleted ones are dropped. Under
``torchrun --nproc-per-node N -m clipforge index ...`` every rank embeds its share; ``--engine ray`` runs the
embedding as a Ray Data job.
"""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("src", help="image folder, CSV/TSV of paths, or WebDataset shards ('data/{000..009}.tar')")
    parser.add_argument("--model", required=True, help="a model name as create_model takes it (ARCH::TAG, "
                                                       "hf-hub:ORG/NAME, local-dir:DIR)")
    parser.add_argument("--out", required=True, help="index folder (created, or updated when it holds an index)")
    parser.add_argument("--precision", default="fp32", help="model precision (default fp32)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                        help="storage type of the embedding parts (default float16)")
    parser.add_argument("--index-type", default="auto",
                        help="auto (by collection size and --memory-budget), flat, hnsw, ivf, ivfpq, opq, or a "
                             "faiss factory string")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                        help="memory the index may use; over it, compressed codes (OPQ+IVF+PQ) are chosen")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="recall@10 against exact search that the search parameter is tuned to (default 0.95)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="reading/decoding workers (default: automatic)")
    parser.add_argument("--part-size", type=int, default=4096,
                        help="images per embedding part: at most this much work is lost if a run is killed")
    parser.add_argument("--engine", default="local", choices=["local", "ray"], help="run the embedding here "
                                                                                  "(local, or torchrun) or on Ray")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--ray-actors", type=int, default=1, help="model actors in the Ray job (default 1)")
    parser.add_argument("--backend", default="faiss", choices=["faiss", "qdrant"], help="where vectors are searched")
    parser.add_argument("--qdrant-url", default=None, help="Qdrant server URL (backend qdrant)")
    parser.add_argument("--qdrant-path", default=None, help="folder for Qdrant's embedded mode (backend qdrant)")
    parser.add_argument("--qdrant-collection", default=None, help="Qdrant collection name (default clipforge-<this index's id>)")
    parser.add_argument("--path-column", default=None, help="table column holding image paths (default: detected)")
    parser.add_argument("--caption-column", default=None, help="table column holding captions (default: detected)")


def summary(report: dict) -> list[str]:
    index = report["index"]
    where = index.get("factory") or f"qdrant collection {index.get('collection')}"
    lines = [f"{report['indexed']} images indexed ({where}; {index.get('reason', '')})".replace("; )", ")"),
             f"this run: {report['new']} new, {report['changed']} changed on disk "
             f"({report['unchanged_bytes']} with the same bytes), {report['kept']} unchanged, "
             f"{report['dropped']} dropped, {report['embedded']} embedded, {report['failed']} unreadable "
             f"({report['skipped_failed_before']} unreadable before and unchanged) in {report['seconds']:.1f}s"]
    if index.get("search_parameter"):
        lines.append(f"search: {index['search_parameter']}={index['search_value']} "
                     f"(recall@10 vs exact {index['tuned_recall_at_10']:.3f})")
    for bad in report["unreadable"][:5]:
        lines.append(f"unreadable: {bad['key']}: {bad['error']}")
    if len(report["unreadable"]) > 5:
        lines.append(f"... {len(report['unreadable']) - 5} more unreadable images listed in report.json")
    for problem in report["listing_problems"][:5]:
        lines.append(f"skipped: {problem}")
    return lines


def run(args) -> int:
    from clipforge.search import IndexConfig, build_index

    config = IndexConfig(model=args.model, precision=args.precision, device=args.device, dtype=args.dtype,
                         index_type=args.index_type, memory_budget_gb=args.memory_budget,
                         target_recall=args.target_recall, batch_size=args.batch_size, workers=args.workers,
                         part_size=args.part_size, engine=args.engine, ray_address=args.ray_address,
                         ray_actors=args.ray_actors, backend=args.backend, qdrant_url=args.qdrant_url,
                         qdrant_path=args.qdrant_path, qdrant_collection=args.qdrant_collection,
                         path_column=args.path_column, caption_column=args.caption_column)
    report = build_index(args.src, args.out, config)
    if report:  # rank 0 only under torchrun
        print("\n".join(summary(report)))
    return 0
