"""Data curation, MetaCLIP's way: match captions against metadata entries, count, balance with a threshold ``t``,
write curated shards.

    from clipforge.curation import match_pool, merge_counts, balance_pool, write_shards, Matcher
    match_pool("pool/{000000..000999}.tar", "metadata.json", "cur/")      # per shard, resumable, any split
    merge_counts("cur/"); balance_pool("cur/", t=20000, seed=0); write_shards("cur/", "t20000-seed0", "curated/")

Level 3 (docs/architecture.md): reads files through ``clipforge.data``; no model involved.
"""
from clipforge.curation.balance import keep_mask, keep_probabilities, tail_share, threshold_for_share
from clipforge.curation.matching import RULES, LanguageMatcher, Matcher, naive_match
from clipforge.curation.metadata import CurationError, Metadata, from_entries, load_metadata, load_metadata_lists
from clipforge.curation.steps import balance_pool, match_pool, merge_counts, plot_counts, stats_table, write_shards

__all__ = ["Matcher", "LanguageMatcher", "naive_match", "RULES", "Metadata", "load_metadata", "load_metadata_lists",
           "from_entries", "CurationError",
           "keep_probabilities", "keep_mask", "tail_share", "threshold_for_share", "match_pool", "merge_counts",
           "balance_pool", "write_shards", "stats_table", "plot_counts"]
