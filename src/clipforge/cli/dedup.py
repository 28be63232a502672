"""``clipforge dedup DIR --threshold 0.95``: groups of near-duplicate images in an index."""
from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("index", help="an index folder written by `clipforge index`")
    parser.add_argument("--threshold", type=float, default=0.95,
                        help="cosine similarity at or above which two images are near-duplicates (default 0.95)")
    parser.add_argument("--neighbours", type=int, default=10, help="neighbours examined per image (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args) -> int:
    from clipforge.search import Index, near_duplicates

    with Index(args.index) as index:
        groups = near_duplicates(index, args.threshold, args.neighbours)
        total = len(index)
    if args.json:
        print(json.dumps([g.to_dict() for g in groups], indent=1))
        return 0
    extra = sum(len(g.members) - 1 for g in groups)
    print(f"{len(groups)} groups of near-duplicates (cosine >= {args.threshold}) among {total} images; "
          f"{extra} could be removed")
    for g in groups:
        print(f"keep {g.keep}")
        for key, sim in g.members[1:]:
            print(f"  {sim:.4f}  {key}")
    return 0
