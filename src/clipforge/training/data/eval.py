"""A small held-out split (e.g. the quickstart's ``val-*.tar``) as a map-style dataset with labels."""
from __future__ import annotations

from torch.utils.data import Dataset

from .batch import DataStats, ImageTransform, open_image
from .shards import check_local_shards, expand_shards
from .tar_stream import _caption, _first, iter_tar


class EvalDataset(Dataset):
    """``dataset[i] = (image tensor, caption, label)``; label is -1 when the sample has none.

    The encoded samples are held in memory (meant for held-out splits of a few thousand images); decoding
    happens per item, so DataLoader workers share the work.
    """

    def __init__(self, records: list[tuple[bytes, str, int]], image_transform: ImageTransform, stats: DataStats):
        self.records, self.image_transform, self.stats = records, image_transform, stats

    def __len__(self) -> int:
        return len(self.records)

    @property
    def captions(self) -> list[str]:
        return [caption for _, caption, _ in self.records]

    @property
    def labels(self) -> list[int]:
        return [label for _, _, label in self.records]

    def __getitem__(self, index: int):
        data, caption, label = self.records[index]
        return self.image_transform(open_image(data)), caption, label


def create_eval_dataset(spec: str, *, image_transform: ImageTransform, image_key: str = "jpg;png;jpeg;webp",
                        caption_key: str = "txt", label_key: str = "cls") -> EvalDataset:
    """Read WebDataset shards (``::`` and braces allowed) in order. Samples lacking an image or a caption,
    or whose image does not decode, are dropped and counted in ``.stats``."""
    shards = expand_shards([s for s in spec.split("::") if s.strip()])
    check_local_shards(shards)
    image_keys, caption_keys = _split(image_key), _split(caption_key)
    counts = DataStats().as_dict()
    records = []
    for url in shards.urls:
        for sample in iter_tar(url, counts):
            image, caption = _first(sample, image_keys), _caption(sample, caption_keys)
            if image is None or not caption or not caption.strip():
                counts["missing_fields"] += 1
                continue
            try:
                open_image(image)
            except Exception:  # any decode failure means this sample cannot be evaluated
                counts["corrupt_images"] += 1
                continue
            records.append((image, caption.strip(), _label(sample.get(label_key))))
    counts["samples"] = len(records)
    return EvalDataset(records, image_transform, DataStats(**counts))


def _label(data: bytes | None) -> int:
    try:
        return int(data.decode().strip()) if data is not None else -1
    except ValueError:
        return -1


def _split(spec: str) -> tuple[str, ...]:
    return tuple(k.strip().lower() for k in spec.split(";") if k.strip())
