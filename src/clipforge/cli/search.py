"""``clipforge search DIR "a query"`` (or ``--image PATH``): the nearest images of an index, as a table or JSON."""
from __future__ import annotations

import json


def _where(items: list[str]) -> dict:
    where = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--where takes COLUMN=VALUE, got {item!r}")
        column, value = item.split("=", 1)
        where[column] = value  # typed by the column it is compared with
    return where


def add_arguments(parser):
    parser.add_argument("index", help="an index folder written by `clipforge index`")
    parser.add_argument("query", nargs="?", default=None, help="text query (or give --image)")
    parser.add_argument("--image", default=None, help="image file to search with (image-to-image)")
    parser.add_argument("-k", type=int, default=10, help="results (default 10)")
    parser.add_argument("--prefix", default=None, help="keep keys (paths) starting with this")
    parser.add_argument("--where", nargs="*", default=[], metavar="COLUMN=VALUE", help="keep rows with these values")
    parser.add_argument("--model", default=None, help="check that the index was made with this model")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def table(hits) -> str:
    lines = [f"{'rank':>4}  {'score':>7}  {'size':>9}  key / caption"]
    for rank, hit in enumerate(hits, 1):
        size = f"{hit.metadata.get('width')}x{hit.metadata.get('height')}"
        caption = f"  | {hit.metadata['caption']}" if hit.metadata.get("caption") else ""
        lines.append(f"{rank:>4}  {hit.score:7.4f}  {size:>9}  {hit.key}{caption}")
    return "\n".join(lines)


def run(args) -> int:
    from clipforge.search import Index

    if (args.query is None) == (args.image is None):
        raise ValueError("give a text query or --image PATH (exactly one)")
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    with Index(args.index, model=args.model) as index:
        where = _where(args.where)
        hits = index.search_text(args.query, args.k, where, args.prefix) if args.query is not None else \
            index.search_image(args.image, args.k, where, args.prefix)
    print(json.dumps([h.to_dict() for h in hits], indent=1) if args.json else table(hits))
    return 0
