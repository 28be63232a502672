"""Readers of data on disk shared by training, evaluation and every later consumer (indexing, curation).

- ``tar``: WebDataset tar shards, streamed or indexed for random access; unreadable or truncated shards are
  counted, never fatal; member names are only ever keys (nothing is extracted to disk);
- ``shards``: shard lists (brace patterns, ``::``-joined sources, sizes.json) and opening local or remote shards;
- ``images``: decoding images with a pixel limit and a named cause for every failure;
- ``tables``: CSV/TSV tables with the separator detected, undecodable rows skipped and counted by file and line;
- ``pickles``: the restricted unpickler for dataset pickles (CIFAR): arrays and bytes only, never code.
"""
