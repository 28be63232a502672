"""A pool's captions, shard by shard: WebDataset tars (text members only; the images are never read from local
uncompressed shards), Parquet files (the caption column only) and CSV/TSV tables.

``list_pool(src)`` gives ``Shard``s; ``read_captions(shard)`` gives the shard's captions in order, ``None`` where a
sample has no caption member or its bytes are not UTF-8 (both counted in ``Captions.skipped``, never fatal).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from clipforge.curation.metadata import CurationError
from clipforge.data import shards as shard_lists
from clipforge.data import tar as tars

CAPTION_FIELDS = ("txt", "caption", "text")  # WebDataset members, in order of preference
CAPTION_COLUMNS = ("caption", "text", "title", "txt")
TABLE_SUFFIXES = (".parquet", ".csv", ".tsv")


@dataclasses.dataclass(frozen=True)
class Shard:
    name: str    # unique in the pool: the sample identities and output file names come from it
    url: str
    kind: str    # "tar" | "parquet" | "table"


@dataclasses.dataclass
class Captions:
    keys: list[str]
    texts: list[str | None]
    skipped: dict[str, int]  # no_caption, not_utf8, shard_errors
    languages: list[str | None] | None = None  # per sample, when a language field was asked for


def _kind(url: str) -> str:
    suffix = Path(url).suffix.lower()
    return "parquet" if suffix == ".parquet" else "table" if suffix in (".csv", ".tsv") else "tar"


def list_pool(src: str) -> list[Shard]:
    """Shards of ``src``: a brace pattern or list of tars, a table file, or a folder of tars / tables."""
    if os.path.isdir(src):
        files = sorted(str(p) for p in Path(src).iterdir()
                       if p.suffix.lower() in TABLE_SUFFIXES + (".tar",) or p.name.endswith((".tar.gz", ".tgz")))
        if not files:
            raise CurationError(f"{src}: no .tar, .parquet, .csv or .tsv files in this folder")
        urls = files
    elif src.lower().endswith(TABLE_SUFFIXES):
        if not os.path.isfile(src):
            raise CurationError(f"caption table not found: {src}")
        urls = [src]
    else:
        shard_list = shard_lists.expand_shards([src])
        shard_lists.check_local_shards(shard_list)
        urls = shard_list.urls
    names = [os.path.basename(u) for u in urls]
    if len(set(names)) != len(names):
        raise CurationError(f"{src}: two shards share a file name; curation results are stored per shard name")
    return [Shard(name, url, _kind(url)) for name, url in zip(names, urls)]


def _decode(raw: bytes, skipped: dict) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        skipped["not_utf8"] += 1
        return None


def _tar_captions(shard: Shard, out: Captions, language_field: str | None) -> None:
    counts = {"shard_errors": 0}
    local = os.path.isfile(shard.url) and tars.is_plain_tar(shard.url)
    samples = tars.index_samples(shard.url, counts) if local else \
        tars.samples_of(shard.url, counts, shard_lists.open_url)
    for sample in samples:
        field = next((f for f in CAPTION_FIELDS if f in sample), None)
        out.keys.append(sample["__key__"])
        if language_field is not None:
            value = sample.get(language_field)
            try:
                raw = tars.read_location(value) if isinstance(value, tuple) else value
                out.languages.append(raw.decode("utf-8").strip() if raw is not None else None)
            except (OSError, UnicodeDecodeError):
                out.languages.append(None)
        if field is None:
            out.skipped["no_caption"] += 1
            out.texts.append(None)
            continue
        value = sample[field]
        try:
            raw = tars.read_location(value) if isinstance(value, tuple) else value
        except OSError:
            counts["shard_errors"] += 1
            out.texts.append(None)
            continue
        out.texts.append(_decode(raw, out.skipped))
    out.skipped["shard_errors"] += counts["shard_errors"]


def _column(columns, wanted: str | None, url: str) -> str:
    if wanted:
        if wanted not in columns:
            raise CurationError(f"{url}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    found = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if found is None:
        raise CurationError(f"{url}: no caption column among {', '.join(columns)}; name it one of "
                            f"{', '.join(CAPTION_COLUMNS)} or pass --caption-column")
    return found


def read_captions(shard: Shard, caption_column: str | None = None, language_field: str | None = None) -> Captions:
    """``language_field``: the tar member (``lang``) or table column holding each caption's language code."""
    out = Captions([], [], {"no_caption": 0, "not_utf8": 0, "shard_errors": 0},
                   [] if language_field is not None else None)
    if not shard.url.startswith(("http://", "https://", "pipe:")) and not os.path.exists(shard.url):
        raise CurationError(f"shard {shard.url} is gone (it was listed when matching started); restore it or "
                            "match again without it")
    if shard.kind == "tar":
        _tar_captions(shard, out, language_field)
    elif shard.kind == "parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(shard.url)
        column = _column(schema.names, caption_column, shard.url)
        wanted = [column] + ([_column(schema.names, language_field, shard.url)] if language_field else [])
        table = pq.read_table(shard.url, columns=wanted)
        values = table.column(column).to_pylist()
        if language_field:
            out.languages = [v if isinstance(v, str) else None for v in table.column(language_field).to_pylist()]
        out.keys = [str(i) for i in range(len(values))]
        out.texts = [v if isinstance(v, str) else None for v in values]
        out.skipped["no_caption"] += sum(v is None for v in out.texts)
    else:
        from clipforge.data.tables import read_table

        table = read_table(shard.url)
        column = _column(table.columns, caption_column, shard.url)
        out.keys = [str(i) for i in range(len(table.rows))]
        out.texts = [row.get(column) or None for row in table.rows]
        if language_field:
            _column(table.columns, language_field, shard.url)
            out.languages = [row.get(language_field) or None for row in table.rows]
        out.skipped["no_caption"] += sum(t is None for t in out.texts)
        out.skipped["not_utf8"] += len(table.bad_rows)
    return out
