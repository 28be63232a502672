"""CSV and TSV tables of image paths and captions, as training and evaluation read them.

``read_table(path)`` detects the separator from the header line (a tab if it has one, else a comma) unless one is
given, and returns the rows as dicts keyed by the header. A row whose bytes are not UTF-8 is skipped and recorded
(``Table.bad_rows``: line numbers); a table where no row is readable is an error naming the file and first line.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os


@dataclasses.dataclass(frozen=True)
class Table:
    path: str
    separator: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    bad_rows: tuple[int, ...]  # 1-based line numbers of rows skipped for undecodable bytes

    def column(self, *candidates: str) -> str | None:
        """The first of ``candidates`` present among the columns (case-insensitive), as spelled in the file."""
        by_lower = {c.strip().lower(): c for c in self.columns}
        return next((by_lower[c.lower()] for c in candidates if c.lower() in by_lower), None)


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def sniff_separator(header: str) -> str:
    return "\t" if "\t" in header else ","


def read_table(path: str | os.PathLike, separator: str | None = None) -> Table:
    """Read a CSV/TSV file with a header line (see module doc)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"table not found: {path}") from None
    text = raw.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark (spreadsheet exports)
    header_line = text.split("\n", 1)[0]
    if not header_line.strip():
        raise ValueError(f"{path} is empty or has no header line: expected column names, then one row per line")
    if _has_surrogates(header_line):
        raise ValueError(f"{path}: line 1 (the header) is not UTF-8 text; save the table as UTF-8")
    sep = separator or sniff_separator(header_line)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    columns = tuple(c.strip() for c in next(reader))
    rows, bad = [], []
    for cells in reader:
        if not cells or not any(c.strip() for c in cells):
            continue
        if any(_has_surrogates(c) for c in cells):
            bad.append(reader.line_num)
            continue
        rows.append(dict(zip(columns, cells)) | ({None: cells[len(columns):]} if len(cells) > len(columns) else {}))
    if not rows and bad:
        raise ValueError(f"{path}: no row is UTF-8 text (first bad row: line {bad[0]}); save the table as UTF-8")
    return Table(path, sep, columns, tuple(rows), tuple(bad))
