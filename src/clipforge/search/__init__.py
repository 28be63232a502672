"""Index and search image collections: ``build_index(SRC, OUT, IndexConfig(model=...))`` embeds a folder, a table
of paths or WebDataset shards (resumable, incremental, unreadable images reported) into a faiss index or a Qdrant
collection; ``Index(OUT)`` searches it by text, image or vector with metadata filters; ``near_duplicates`` groups
near-identical images.

Level 4 (docs/architecture.md): it encodes with the models of level 2 through ``clipforge.evaluation``'s encoders.
"""
from clipforge.search.build import IndexConfig, IndexMismatch, build_index
from clipforge.search.dedup import Group, near_duplicates
from clipforge.search.index import Hit, Index, NoIndex
from clipforge.search.sources import SourceError

__all__ = ["build_index", "IndexConfig", "IndexMismatch", "Index", "Hit", "NoIndex", "near_duplicates", "Group",
           "SourceError"]
