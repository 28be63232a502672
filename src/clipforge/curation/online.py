"""Balancing while training: each epoch keeps each sample of a matched pool with MetaCLIP's probabilities, with
fresh draws every epoch (``data.balance_from`` in the training config), so a pool is balanced without writing new
shards and every epoch sees another balanced subset of the head entries. Epoch 0 keeps exactly the set
``clipforge curate balance --t T --seed S`` keeps (same draws)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clipforge.curation import balance as bal
from clipforge.curation.metadata import CurationError
from clipforge.curation.steps import merge_counts, probabilities, read_matches, read_run


class OnlineBalance:
    def __init__(self, folder: str | os.PathLike, t: float, seed: int = 0, per_language: bool = False,
                 reference: str = "en"):
        self.folder, self.seed = Path(folder), seed
        run = read_run(self.folder)
        self.shards = {name for name, _, _ in run["shards"]}
        counts = np.load(self.folder / "counts.npy") if (self.folder / "counts.npy").is_file() else \
            merge_counts(self.folder)
        self.probabilities, self.thresholds = probabilities(run, counts, t, per_language, reference)
        self._matches: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _shard(self, url: str) -> tuple[str, np.ndarray, np.ndarray]:
        name = os.path.basename(url)
        if name not in self.shards:
            raise CurationError(f"shard {name} is not in the curation folder {self.folder}: run `clipforge curate "
                                "match` on the training shards")
        if name not in self._matches:
            m = read_matches(self.folder, name, "offsets", "ids")
            self._matches[name] = (m["offsets"], m["ids"])
        return (name, *self._matches[name])

    def expected_samples(self, urls) -> int:
        """Samples an epoch keeps on average over the shards at ``urls``."""
        total = 0.0
        for url in urls:
            _, offsets, ids = self._shard(url)
            total += bal.expected_kept(offsets, ids, self.probabilities)[0]
        return max(1, round(total))

    def mask(self, url: str, epoch: int) -> np.ndarray:
        """Which samples of the shard at ``url`` (by position) this epoch keeps."""
        name, offsets, ids = self._shard(url)
        return bal.keep_mask(offsets, ids, bal.sample_ids(name, len(offsets) - 1), self.probabilities, self.seed,
                             epoch)
