"""Thumbnails of indexed images, addressed by their position in the index: the file read is the one the index
recorded for that position, so no request can name a path (no traversal by construction)."""
from __future__ import annotations

import collections
import io
import os
import threading

from clipforge.serving.config import ServeConfig
from clipforge.serving.inputs import InputError, open_image


class Thumbnails:
    def __init__(self, index, config: ServeConfig, capacity: int = 1024):
        self.index, self.config, self.capacity = index, config, capacity
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._shards: dict[str, dict[str, object]] = {}  # tar path -> key -> (tar, offset, size)
        self._lock = threading.Lock()

    def _location(self, row: int) -> object:
        meta = self.index.row(row)
        path = meta.get("path") or ""
        if not meta.get("shard"):
            return path
        from clipforge.data import tar as tars
        from clipforge.search import sources

        if not (os.path.isfile(path) and tars.is_plain_tar(path)):
            raise InputError(f"no thumbnail for {meta['key']}: its shard is not a local uncompressed tar", 404)
        with self._lock:
            if path not in self._shards:
                self._shards[path] = {item.key: item.location for item in sources.list_shards(path).items}
            return self._shards[path].get(meta["key"])

    def get(self, row: int) -> bytes:
        """A JPEG no larger than ``thumbnail_size`` on its longer side."""
        if not 0 <= row < len(self.index):
            raise InputError(f"no image {row} in the index (it holds {len(self.index)})", 404)
        with self._lock:
            if row in self._cache:
                self._cache.move_to_end(row)
                return self._cache[row]
        from clipforge.search import sources

        location = self._location(row)
        try:
            data = sources.read_bytes(location)
        except (OSError, TypeError) as e:
            raise InputError(f"image {row} is no longer readable: {e}", 404) from None
        image = open_image(data, self.config, f"image {row}")
        image.thumbnail((self.config.thumbnail_size, self.config.thumbnail_size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        thumb = buffer.getvalue()
        with self._lock:
            self._cache[row] = thumb
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return thumb
