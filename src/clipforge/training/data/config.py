"""``DataConfig``: the ``data`` section of the training config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clipforge.config import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Where training pairs come from and how they are batched.

    ``train`` is a path or URL spec. Several sources are separated by ``::`` and each may use brace
    ranges (``shards/train-{000000..000099}.tar::pipe:cat extra-{0..3}.tar``). For ``csv`` it names one or
    more CSV/TSV files; for ``synthetic`` it is ignored.

    ``train_weights`` (``"1::4"``) gives one sampling weight per source; every shard of a source is drawn
    with that weight, so it needs ``resampled=True`` (shards drawn with replacement).

    ``batch_size`` is per rank. ``num_samples`` defines the epoch length (all ranks together); when unset it
    comes from the CSV row count or a ``sizes.json`` / ``__len__`` file next to the shards.
    ``shuffle_buffer`` is the WebDataset sample shuffle buffer (CSV and synthetic always use a full
    permutation). ``text_mask_prob`` drops each caption token with that probability (0 = off).
    ``balance_from`` (a ``clipforge curate`` folder where the training shards were matched) keeps each sample with
    MetaCLIP's probability for ``balance_t``, drawn afresh each epoch (seeded by ``seed``).
    """

    kind: Literal["csv", "webdataset", "synthetic"] = "webdataset"
    train: str = ""
    train_weights: str | None = None
    num_samples: int | None = None
    batch_size: int = 64
    workers: int = 0
    seed: int = 0
    shuffle_buffer: int = 1000
    resampled: bool = False
    csv_separator: str | None = None        # None: a tab if the header has one, else a comma
    csv_image_key: str = "filepath"
    csv_caption_key: str = "title"
    wds_image_key: str = "jpg;png;jpeg;webp"
    wds_caption_key: str = "txt"
    text_mask_prob: float = 0.0
    # Images leave the workers as uint8 and the training loop normalises each batch on its device: the same
    # numbers, a quarter of the bytes through worker queues, pinned memory and the host-to-device copy (with
    # augment.re_prob > 0 images are normalised per image, since random erasing works on normalised values)
    uint8_images: bool = True
    balance_from: str | None = None       # a `clipforge curate` folder: MetaCLIP balancing per epoch (webdataset)
    balance_t: float = 20000.0            # its threshold t
    balance_per_language: bool = False    # MetaCLIP 2: per-language lists get the t keeping English's share (en)
    # caption transforms, per sample and seeded (training.data.captions)
    class_captions: str | None = None     # FLYP: class-names file; the caption member holds a class index
    class_templates: str | None = None    # templates with {} for class captions, one per line (default "a photo of a {}.")
    synonym_prob: float = 0.0             # replace each word that has synonyms with this probability (0 = off)
    synonyms: str | None = None           # "wordnet" (nltk + its data) or a word list (JSON or "word: syn, syn" lines)
    protected_words: tuple[str, ...] = () # words / phrases never replaced; "@FILE" adds FILE's lines (class names)

    def __post_init__(self):
        checks = [
            (self.kind in ("csv", "webdataset", "synthetic"),
             f"data.kind={self.kind!r} is not one of 'csv', 'webdataset', 'synthetic'"),
            (self.batch_size > 0, f"data.batch_size must be positive, got {self.batch_size}"),
            (self.workers >= 0, f"data.workers must be >= 0, got {self.workers}"),
            (self.shuffle_buffer >= 0, f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}"),
            (0.0 <= self.text_mask_prob < 1.0,
             f"data.text_mask_prob must be in [0, 1), got {self.text_mask_prob}"),
            (self.num_samples is None or self.num_samples > 0,
             f"data.num_samples must be positive when set, got {self.num_samples}"),
            (self.train_weights is None or self.kind == "webdataset",
             "data.train_weights only applies to data.kind='webdataset'"),
            (self.balance_from is None or self.kind == "webdataset",
             "data.balance_from applies to data.kind='webdataset' (the pool's shards, matched by clipforge curate)"),
            (self.balance_t > 0, f"data.balance_t must be positive, got {self.balance_t}"),
            (isinstance(self.uint8_images, bool),
             f"data.uint8_images must be true or false, got {self.uint8_images!r}"),
            (0.0 <= self.synonym_prob <= 1.0, f"data.synonym_prob must be in [0, 1], got {self.synonym_prob}"),
            (self.synonym_prob == 0 or self.synonyms, "data.synonym_prob > 0 needs data.synonyms: 'wordnet' (nltk) "
                                                      "or a word-list file"),
            (self.class_templates is None or self.class_captions,
             "data.class_templates needs data.class_captions (the class-names file)"),
            (self.train_weights is None or self.resampled,
             "data.train_weights needs data.resampled=true: weights decide how often shards are drawn"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.train_weights is not None:
            self.source_weights()  # validates the weight spec early

    def check_ready(self) -> None:
        """Checks that need the whole section filled in (run when a loader is made, not at each override)."""
        if self.kind != "synthetic" and not self.train.strip():
            raise ConfigError(f"data.train is empty: set it to the {self.kind} path(s) to read "
                              "(e.g. data.train=/data/train.tsv)")
        if self.kind == "synthetic" and self.num_samples is None:
            raise ConfigError("data.kind='synthetic' needs data.num_samples (how many samples make an epoch)")

    def sources(self) -> list[str]:
        """The ``::``-separated source specs of ``train`` (braces not yet expanded)."""
        return [s.strip() for s in self.train.split("::") if s.strip()]

    def source_weights(self) -> list[float] | None:
        """One weight per source, or None when unweighted."""
        if self.train_weights is None:
            return None
        parts = self.train_weights.split("::")
        try:
            weights = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(f"data.train_weights={self.train_weights!r} must be numbers separated by '::'") from None
        if len(weights) != len(self.sources()):
            raise ConfigError(f"data.train_weights has {len(weights)} weights but data.train has "
                              f"{len(self.sources())} sources separated by '::'; give one weight per source")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"data.train_weights={self.train_weights!r}: weights must be >= 0 and not all zero")
        return weights
