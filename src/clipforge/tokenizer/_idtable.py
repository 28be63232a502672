"""A string -> ids table stored flat, so that a whole stream of keys is turned into ids by numpy gathers."""
from __future__ import annotations

from array import array
from itertools import accumulate, chain

import numpy as np


class IdTable:
    """Key -> row; row ``r`` holds ``lengths[r]`` ids from ``ids[starts[r]]`` on.

    ``reserved``, when given, is row 0 and holds no ids (the batched path uses it to separate texts).
    """

    def __init__(self, reserved: str | None = None):
        self.index: dict[str, int] = {}
        self.starts, self.lengths, self.ids = array("q"), array("q"), array("q")
        if reserved is not None:
            self.index[reserved] = 0
            self.starts.append(0)
            self.lengths.append(0)

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def from_dict(cls, ids_of: dict[str, tuple[int, ...]], reserved: str | None = None) -> IdTable:
        """A table of every key of ``ids_of`` except ``reserved``, which keeps row 0 and no ids."""
        table = cls(reserved)
        keys = [key for key in ids_of if key != reserved]
        values = list(map(ids_of.__getitem__, keys))
        lengths = list(map(len, values))
        table.index.update(zip(keys, range(len(table.starts), len(table.starts) + len(keys))))
        table.starts.extend(list(accumulate(lengths, initial=0))[:-1])
        table.lengths.extend(lengths)
        table.ids.extend(chain.from_iterable(values))
        return table

    def extend(self, keys: list[str], lengths: np.ndarray, ids: np.ndarray) -> None:
        """Append ``keys`` (not in the table yet), whose ids are ``ids`` one key after the other, ``lengths[i]`` ids
        for key ``i``."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != len(ids) or len(lengths) != len(keys):
            raise ValueError(f"{len(keys)} keys with {int(lengths.sum())} ids in all, but {len(ids)} ids given")
        self.index.update(zip(keys, range(len(self.starts), len(self.starts) + len(keys))))
        self.starts.frombytes((np.cumsum(lengths) - lengths + len(self.ids)).tobytes())
        self.lengths.frombytes(lengths.tobytes())
        self.ids.frombytes(np.asarray(ids, dtype=np.int64).tobytes())

    def append(self, key: str, ids) -> None:
        """Add one key (not in the table yet) with its ids."""
        self.index[key] = len(self.starts)
        self.starts.append(len(self.ids))
        self.lengths.append(len(ids))
        self.ids.extend(ids)

    def copy(self) -> IdTable:
        table = IdTable()
        table.index = dict(self.index)
        table.starts, table.lengths, table.ids = array("q", self.starts), array("q", self.lengths), array("q", self.ids)
        return table

    def rows(self, keys: list[str]) -> np.ndarray:
        """Row of each key (all must be in the table); raises KeyError otherwise."""
        return np.fromiter(map(self.index.__getitem__, keys), dtype=np.int64, count=len(keys))

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all the rows one after the other, number of ids of each row)."""
        lengths = np.frombuffer(self.lengths, dtype=np.int64)[rows]  # (R,)
        starts = np.frombuffer(self.starts, dtype=np.int64)[rows]  # (R,)
        total = int(lengths.sum())
        if total == 0:  # also keeps np.frombuffer away from an empty store
            return np.zeros(0, dtype=np.int64), lengths
        inside = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (T,) offset in its row
        return np.frombuffer(self.ids, dtype=np.int64)[np.repeat(starts, lengths) + inside], lengths

    def pack_into(self, out: np.ndarray, rows: np.ndarray, groups: np.ndarray, column: int, width: int) -> np.ndarray:
        """Write the ids of ``rows`` into ``out`` by group: line ``g`` of ``out`` gets, from ``column`` on, the first
        ``width`` ids of the rows of group ``g`` (``groups``, non-decreasing, gives each row's group), one row after
        the other. Returns the number of ids of each group before truncation.

        All at the level of rows, then three ``np.repeat`` to ids; rows that start past the width are dropped first.
        """
        if not out.flags.c_contiguous:
            raise ValueError("pack_into writes through a flat view: pass a C-contiguous array")
        lengths = np.frombuffer(self.lengths, dtype=np.int64)[rows]  # (R,)
        starts = np.frombuffer(self.starts, dtype=np.int64)[rows]  # (R,)
        counts = np.bincount(groups, weights=lengths, minlength=len(out)).astype(np.int64)  # (G,) ids per group
        pos = np.cumsum(lengths) - lengths - (np.cumsum(counts) - counts)[groups]  # (R,) first id's place in group
        kept = (pos < width) & (lengths > 0)
        lengths, starts, pos, groups = lengths[kept], starts[kept], pos[kept], groups[kept]  # (R',)
        total = int(lengths.sum())
        if total == 0:
            return counts
        shift = np.cumsum(lengths) - lengths  # (R',) where each kept row's ids start among all kept ids
        step = np.arange(total)  # (T,)
        place = step + np.repeat(pos - shift, lengths)  # (T,) place of each id in its group
        inside = place < width
        source = step + np.repeat(starts - shift, lengths)  # (T,) index in the id store
        target = place + np.repeat(groups * out.shape[1] + column, lengths)  # (T,) index in the flat ``out``
        out.reshape(-1)[target[inside]] = np.frombuffer(self.ids, dtype=np.int64)[source[inside]]
        return counts
