"""``clipforge curate match|merge|balance|write|stats``: MetaCLIP's metadata matching and balancing over a pool."""
from __future__ import annotations

import json


def add_arguments(parser):
    steps = parser.add_subparsers(dest="step", metavar="STEP", required=True)
    match = steps.add_parser("match", help="find the metadata entries in each caption, per shard (resumable)")
    match.add_argument("src", help="WebDataset shards ('pool/{000000..000999}.tar'), a Parquet/CSV/TSV table or a "
                                   "folder of them")
    match.add_argument("--metadata", required=True, help="entries: a JSON list (MetaCLIP's metadata.json) or one "
                                                         "per line; a folder of LANG.json lists for MetaCLIP 2")
    match.add_argument("--language-field", default=None, help="per-language lists: the member/column with each "
                                                              "caption's language code (default: lang)")
    match.add_argument("--out", required=True, help="the curation folder")
    match.add_argument("--rule", default="metaclip1", choices=["metaclip1", "metaclip2", "words"])
    match.add_argument("--caption-column", default=None, help="tables: the caption column")
    match.add_argument("--shard-index", type=int, default=None, help="this job's share (default: torchrun rank or 0)")
    match.add_argument("--num-shards", type=int, default=None, help="how many jobs share the pool (default: world)")
    match.add_argument("--workers", type=int, default=1, help="processes on this machine (each its own automaton)")
    match.add_argument("--engine", default="local", choices=["local", "ray"], help="ray: a Ray Data job over the shards")
    match.add_argument("--ray-address", default=None, help="a running Ray cluster ('auto'); default: a local Ray")
    match.add_argument("--ray-actors", type=int, default=2, help="Ray actors (each builds the automaton once)")
    merge = steps.add_parser("merge", help="sum the per-shard counts (every shard must be matched)")
    merge.add_argument("dir")
    balance = steps.add_parser("balance", help="keep masks for a threshold t (reuses the matches)")
    balance.add_argument("dir")
    balance.add_argument("--t", type=float, default=20000, help="entry count threshold (MetaCLIP: 20000 for 400M)")
    balance.add_argument("--seed", type=int, default=0)
    balance.add_argument("--plot", default=None, help="also write the sorted counts before/after as this PNG")
    balance.add_argument("--per-language", action="store_true", help="MetaCLIP 2: each list's own t, keeping the "
                                                                     "share of matches the reference language keeps")
    balance.add_argument("--reference-language", default="en", help="the list that takes --t (default en)")
    write = steps.add_parser("write", help="curated WebDataset shards (+ matched.json per sample, sizes.json)")
    write.add_argument("dir")
    write.add_argument("--balanced", required=True, help="a balanced set, e.g. t20000-seed0")
    write.add_argument("--out", required=True)
    meta = steps.add_parser("metadata", help="build a metadata list (MetaCLIP's recipe) or write the shipped example")
    meta.add_argument("--out", required=True, help="the JSON list to write")
    meta.add_argument("--example", action="store_true", help="the shipped example: 1,642 visual concepts")
    meta.add_argument("--wordnet", action="store_true", help="every WordNet lemma (nltk and its wordnet data)")
    meta.add_argument("--corpus", nargs="*", default=[], help="text files: frequent words and word pairs")
    meta.add_argument("--min-count", type=int, default=100, help="corpus words/pairs seen at least this often")
    meta.add_argument("--min-pmi", type=float, default=5.0, help="corpus pairs with at least this PMI (natural log)")
    meta.add_argument("--titles", default=None, help="titles, one per line (optionally TITLE<TAB>VIEWS)")
    meta.add_argument("--min-views", type=int, default=0)
    meta.add_argument("--add", nargs="*", default=[], help="more entry files (JSON list or one per line)")
    stats = steps.add_parser("stats", help="head/tail entry counts before and after balancing")
    stats.add_argument("dir")
    stats.add_argument("--balanced", required=True)
    stats.add_argument("--plot", default=None)


def run(args) -> int:
    from clipforge import curation

    if args.step == "match":
        from clipforge import dist

        rank, _, world = dist.read_environment()  # torchrun / SLURM ranks split the shards like a job array
        index = args.shard_index if args.shard_index is not None else rank
        count = args.num_shards if args.num_shards is not None else world
        totals = curation.match_pool(args.src, args.metadata, args.out, args.rule, index, count, args.caption_column,
                                     engine=args.engine, ray_address=args.ray_address, ray_actors=args.ray_actors,
                                     language_field=args.language_field, workers=args.workers)
        print(json.dumps(totals))
    elif args.step == "merge":
        counts = curation.merge_counts(args.dir)
        print(f"{int(counts.sum())} matches over {int((counts > 0).sum())} of {len(counts)} entries")
    elif args.step == "balance":
        summary = curation.balance_pool(args.dir, args.t, args.seed, args.per_language, args.reference_language)
        name = f"t{summary['t']:g}-seed{summary['seed']}" + ("-lang" if args.per_language else "")
        print(curation.stats_table(args.dir, name))
        if args.plot:
            print(f"plot: {curation.plot_counts(args.dir, name, args.plot)}")
    elif args.step == "metadata":
        _metadata(args)
    elif args.step == "write":
        print(json.dumps(curation.write_shards(args.dir, args.balanced, args.out)))
    else:
        print(curation.stats_table(args.dir, args.balanced))
        if args.plot:
            print(f"plot: {curation.plot_counts(args.dir, args.balanced, args.plot)}")
    return 0


def _metadata(args) -> None:
    from clipforge._atomic import write_text_atomic
    from clipforge.curation import build_metadata as bm
    from clipforge.curation.metadata import load_metadata

    sources = {}
    if args.example:
        sources["example"] = bm.example_metadata()
    if args.wordnet:
        sources["wordnet"] = bm.wordnet_lemmas()
    if args.corpus:
        def lines():
            for path in args.corpus:
                with open(path, encoding="utf-8", errors="replace") as f:
                    yield from f
        sources["corpus words"], sources["corpus pairs"] = bm.corpus_entries(lines(), args.min_count, args.min_pmi)
    if args.titles:
        sources["titles"] = bm.titles(args.titles, args.min_views)
    for path in args.add:
        sources[path] = list(load_metadata(path).entries)
    entries, added = bm.build(sources)
    write_text_atomic(args.out, json.dumps(entries, ensure_ascii=False))
    write_text_atomic(args.out + ".sources.json", json.dumps(added, indent=1))
    print(f"{len(entries)} entries -> {args.out} ({', '.join(f'{k}: {v}' for k, v in added.items())})")
