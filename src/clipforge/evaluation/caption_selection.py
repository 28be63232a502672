"""Image-caption selection, clip_benchmark's ``image_caption_selection`` task, on SugarCrepe and Winoground.

Each instance has images and captions, image i going with caption i (SugarCrepe: one COCO image, its caption and
a hard negative; Winoground: two images and their two captions). ``text_acc``: every image's most similar caption
is its own; ``image_acc``: every caption's most similar image is its own; ``acc``: both (Winoground's text, image
and group scores). With one image per instance ``image_acc`` is 1 and ``acc`` is ``text_acc``, as in
clip_benchmark. Equal scores pick the first candidate (``argmax``), also as clip_benchmark; the "pessimistic" tie
rule counts a tie as a miss instead.

SugarCrepe is ``sugar_crepe/<task>`` (``TASKS``) as clip_benchmark leaves it in its dataset folder:
``root/<task>.json`` (``{id: {filename, caption, negative_caption}}``) + ``root/val2017/<filename>``; the benchmark
reads every task from ``<data root>/sugar_crepe``::

    clipforge benchmark --model ViT-B-32::openai --datasets sugar_crepe --data-root data

Winoground is read from the Hugging Face ``datasets`` cache clip_benchmark's ``load_dataset("facebook/winoground",
cache_dir=root)`` leaves in ``root`` (``evaluation.hf_cache``; ``datasets`` itself is not needed), the benchmark's
``root`` being ``<data root>/winoground``.

From Python::

    data = load_sugar_crepe("swap_att", "data/sugar_crepe", transform=encoders.transform)
    metrics = evaluate_caption_selection(encoders, data)   # {"image_acc", "text_acc", "acc", "num_samples", ...}
    metrics = evaluate_caption_selection(encoders, load_winoground("data/winoground", encoders.transform))
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import torch

from clipforge.evaluation import hf_cache
from clipforge.evaluation.datasets import DatasetNotFound, ImageDataset, collate_skipping
from clipforge.evaluation.features import EncodedImages, Encoders, encode_images, encode_texts
from clipforge.evaluation.layouts import OpenFile
from clipforge.evaluation.metrics import check_tie_rule
from clipforge.evaluation.suites import SUGAR_CREPE_TASKS as TASKS

SOURCE = "the SugarCrepe repository's data/ folder (github.com/RAIVNLab/sugar-crepe)"
WINOGROUND_REPO = "facebook/winoground"


@dataclasses.dataclass
class SelectionSet:
    """Instances of ``images_per_instance`` images each: ``dataset[k]`` is image ``k % images_per_instance`` of
    instance ``k // images_per_instance``; ``captions[i]`` are instance i's captions, image j's own caption j-th."""

    name: str
    dataset: ImageDataset
    captions: list[list[str]]
    source: str = ""
    shard_errors: int = 0
    images_per_instance: int = 1

    @property
    def tasks(self) -> tuple[str, ...]:
        """What the benchmark runs on it (``LoadedDataset.tasks``' counterpart)."""
        return ("caption_selection",)


def missing_folder(root: str, names: list[str], download: bool = False) -> str:
    """The one-line error for a SugarCrepe folder that is not there at all (one line for all its tasks)."""
    files = ", ".join(f"{name.rpartition('/')[2]}.json" for name in names)
    why = " (clipforge does not download SugarCrepe)" if download else ""
    asked = "sugar_crepe" if len(names) == len(TASKS) else ", ".join(names)
    return (f"{asked}: SugarCrepe folder {root} not found{why}. Put the task files ({files}) from "
            f"{SOURCE} in {root}/ and the COCO 2017 validation images in {os.path.join(root, 'val2017')}/")


def load_sugar_crepe(task: str, root: str, transform: Callable | None = None, split: str = "test") -> SelectionSet:
    """SugarCrepe's ``task`` from clip_benchmark's folder layout (see the module doc); it has only a test split."""
    if split != "test":
        raise ValueError(f"'sugar_crepe/{task}' has only the 'test' split, not '{split}'")
    if task not in TASKS:
        raise KeyError(f"unknown SugarCrepe task '{task}'; choose one of {', '.join(TASKS)}")
    annotation, images = os.path.join(root, f"{task}.json"), os.path.join(root, "val2017")
    if not os.path.isfile(annotation) or not os.path.isdir(images):
        raise DatasetNotFound(f"dataset 'sugar_crepe/{task}' not found at {root}. Put {annotation} (from the "
                              f"SugarCrepe repository's data/) and the COCO 2017 validation images in {images}/")
    fix = "fetch it again from the SugarCrepe repository's data/ folder"
    try:
        with open(annotation, encoding="utf-8") as f:
            items = list(json.load(f).values())
        paths = [os.path.join(images, item["filename"]) for item in items]
        captions = [[item["caption"], item["negative_caption"]] for item in items]
    except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as e:
        raise ValueError(f"{annotation} is not a SugarCrepe file ({{id: {{filename, caption, negative_caption}}}}: "
                         f"{type(e).__name__}: {e}); {fix}") from None
    return SelectionSet(f"sugar_crepe/{task}", ImageDataset(paths, OpenFile(), transform), captions,
                        os.path.abspath(root))


def load_winoground(root: str, transform: Callable | None = None, split: str = "test") -> SelectionSet:
    """Winoground from the Hugging Face ``datasets`` cache in ``root`` (see the module doc): two images and two
    captions per instance, in the cache's row order."""
    folder, info = hf_cache.prepared_folder(root, WINOGROUND_REPO, "winoground")
    files = hf_cache.split_files(folder, info, split, WINOGROUND_REPO)
    images, rows, text = hf_cache.read_columns(files, ("image_0", "image_1", "caption_0", "caption_1"),
                                               ("caption_0", "caption_1"), WINOGROUND_REPO)
    samples = [(index, row, column) for index, row in rows for column in ("image_0", "image_1")]
    captions = [[first, second] for first, second in zip(text["caption_0"], text["caption_1"])]
    return SelectionSet("winoground", ImageDataset(samples, images, transform), captions, os.path.abspath(folder),
                        images_per_instance=2)


def _picks_own(scores: torch.Tensor, dim: int, pairs: int, ties: str) -> torch.Tensor:
    """(N,) whether, along ``dim``, each of the first ``pairs`` rows' best match is its own (index i for row i)."""
    right = scores.argmax(dim=dim) == torch.arange(scores.shape[3 - dim])  # (N, rows)
    if ties == "pessimistic":  # a tie with any other candidate is a miss
        right &= (scores == scores.amax(dim=dim, keepdim=True)).sum(dim=dim) == 1
    return right[:, :pairs].all(dim=1)


def selection_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      ties: str = "reference") -> dict[str, float]:
    """Metrics from (N, I, D) image and (N, C, D) caption features (normalised); image i goes with caption i."""
    check_tie_rule(ties)
    scores = image_features @ text_features.transpose(1, 2)  # (N, I, C)
    pairs = min(scores.shape[1], scores.shape[2])
    text_right = _picks_own(scores, 2, pairs, ties)  # each image's best caption is its own
    image_right = _picks_own(scores, 1, pairs, ties)  # each caption's best image is its own
    return {"image_acc": image_right.float().mean().item(), "text_acc": text_right.float().mean().item(),
            "acc": (text_right & image_right).float().mean().item()}


def evaluate_caption_selection(encoders: Encoders, data: SelectionSet, batch_size: int = 64,
                               num_workers: int = 0, ties: str = "reference") -> dict[str, float]:
    """The selection metrics of one model on ``data``; instances whose image cannot be read are skipped."""
    loader = torch.utils.data.DataLoader(data.dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate_skipping)
    return score_selection(encoders, data, encode_images(encoders.encode_image, loader), ties)


def score_selection(encoders: Encoders, data: SelectionSet, encoded: EncodedImages,
                    ties: str = "reference") -> dict[str, float]:
    """The selection metrics from ``data``'s encoded images (targets: dataset indices, as the benchmark's
    encoding and its feature cache give them); the captions are encoded here. An instance with an unreadable
    image is left out and counted in ``num_skipped``."""
    images, kept = _instance_features(encoded, data.images_per_instance, len(data.captions))
    if not kept:
        raise ValueError(f"'{data.name}': no instance has all its images readable ({encoded.skipped} image(s) "
                         "skipped)")
    counts = {len(data.captions[i]) for i in kept}
    if len(counts) != 1:
        raise ValueError(f"'{data.name}': instances have different numbers of captions ({sorted(counts)})")
    texts = encode_texts(encoders.encode_text, encoders.tokenize, [c for i in kept for c in data.captions[i]])
    metrics = selection_metrics(images, texts.view(len(kept), counts.pop(), -1), ties)
    return {**metrics, "num_samples": len(kept), "num_skipped": len(data.captions) - len(kept)}


def _instance_features(encoded: EncodedImages, per: int, instances: int) -> tuple[torch.Tensor, list[int]]:
    """(N, per, D) features of the instances whose ``per`` images were all read, and those instances' indices."""
    index = encoded.targets.long()  # dataset indices of the images read, in any order
    row_of = torch.full((instances * per,), -1, dtype=torch.long)
    row_of[index] = torch.arange(len(index))
    rows = row_of.view(instances, per)
    kept = (rows >= 0).all(dim=1).nonzero().flatten()
    if len(kept) == 0:
        return encoded.features.new_zeros(0), []
    return encoded.features[rows[kept].flatten()].view(len(kept), per, -1), kept.tolist()
