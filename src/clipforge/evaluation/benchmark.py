"""Run the benchmark: models x datasets x tasks -> flat metrics -> tables.

``evaluate(encoders, datasets)`` is the Python entry (used by ``clipforge benchmark`` and the trainer's eval
hook): it takes the model's encode functions and loaded datasets and returns ``{"<dataset>/<metric>": value}``.
``run_benchmark(model_specs, config)`` adds the model loading (``ARCH``, ``ARCH::TAG``, ``ARCH::path``,
``hf-hub:org/repo``), resource statistics and the feature cache.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Sequence

import torch

from clipforge.models.factory import ModelLoadError  # the one error for models that cannot be loaded
from clipforge.models.weights import split_model_tag
from clipforge.evaluation import datasets as ds
from clipforge.evaluation import suites
from clipforge.evaluation.features import EncodedImages, Encoders, cache_key, cached, encode_images
from clipforge.evaluation.linear_probe import probe_features
from clipforge.evaluation.retrieval import retrieve
from clipforge.evaluation.stats import resource_usage
from clipforge.evaluation.zeroshot import build_classifier, classify

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "statistics")
_TASKS_OF = {"classification": ("zeroshot_classification", "linear_probe"), "retrieval": ("zeroshot_retrieval",)}


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What to run. ``datasets`` may name suites (``vtab``, ``retrieval``, ``classification``)."""

    tasks: tuple[str, ...] = ("zeroshot_classification", "zeroshot_retrieval")
    datasets: tuple[str, ...] = ("classification", "retrieval")
    data_root: str = "data"
    split: str = "test"
    batch_size: int = 64
    num_workers: int = 2
    cache_dir: str | None = None
    allow_download: bool = False
    recall_k: tuple[int, ...] = (1, 5, 10)
    templates: str = ""  # a shipped template set to use for every dataset, e.g. "imagenet1k_selected"
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        if self.templates:
            suites.get_templates(self.templates, strict=True)  # a typo must not fall back to other prompts


class Progress:
    """Prints '<label>: n/total images' to stderr at most every ``every`` seconds."""

    def __init__(self, label: str, total: int | None, every: float = 2.0, stream=sys.stderr):
        self.label, self.total, self.every, self.stream = label, total, every, stream
        self.done, self._last, self._start = 0, float("-inf"), time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every or (self.total and self.done >= self.total):
            rate = self.done / max(now - self._start, 1e-9)
            total = f"/{self.total}" if self.total else ""
            print(f"  {self.label}: {self.done}{total} images ({rate:.0f} img/s)", file=self.stream, flush=True)
            self._last = now


def make_loader(dataset, batch_size: int, num_workers: int, device: str = "cpu"):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       collate_fn=ds.collate_skipping, pin_memory=device.startswith("cuda"))


def _encode(encoders: Encoders, loaded: ds.LoadedDataset, split: str, config: BenchmarkConfig,
            quiet: bool) -> EncodedImages:
    path = None
    if config.cache_dir:
        key = cache_key(encoders.model_id, loaded.name, split, encoders.transform_id, len(loaded.dataset),
                        loaded.source)
        path = os.path.join(config.cache_dir, key + ".pt")
    label = f"{encoders.model_id} {loaded.name}/{split}"
    progress = None if quiet else Progress(label, len(loaded.dataset))

    def compute():
        loader = make_loader(loaded.dataset, config.batch_size, config.num_workers, config.device)
        encoded = encode_images(encoders.encode_image, loader, progress)
        return dataclasses.asdict(encoded)

    return EncodedImages(**cached(path, compute))


def evaluate_dataset(encoders: Encoders, loaded: ds.LoadedDataset, config: BenchmarkConfig,
                     train: ds.LoadedDataset | None = None, quiet: bool = True) -> dict[str, float]:
    """Metrics of one model on one loaded dataset, keyed ``<dataset>/<metric>``."""
    out: dict[str, float] = {}
    encoded = _encode(encoders, loaded, config.split, config, quiet)
    if loaded.task == "retrieval":
        if "zeroshot_retrieval" in config.tasks:
            out.update(retrieve(encoded, encoders.encode_text, encoders.tokenize, config.recall_k))
    else:
        if "zeroshot_classification" in config.tasks:
            templates = suites.get_templates(config.templates, strict=True) if config.templates else loaded.templates
            classifier = build_classifier(encoders.encode_text, encoders.tokenize, loaded.classnames, templates)
            out.update(classify(encoded, classifier, loaded.classnames))
        if "linear_probe" in config.tasks and train is not None and not loaded.multilabel:
            train_encoded = _encode(encoders, train, "train", config, quiet)
            probe = probe_features(train_encoded, encoded, len(loaded.classnames))
            out.update({f"linear_probe_{k}": v for k, v in probe.items()})
    return {f"{loaded.name}/{k}": v for k, v in out.items()}


def evaluate(encoders: Encoders, loaded: Sequence[ds.LoadedDataset], config: BenchmarkConfig | None = None,
             quiet: bool = True) -> dict[str, float]:
    """Flat metrics of one model over already loaded datasets (the trainer's eval hook calls this)."""
    config = config or BenchmarkConfig()
    results: dict[str, float] = {}
    for item in loaded:
        results.update(evaluate_dataset(encoders, item, config, quiet=quiet))
    return results


def dataset_root(data_root: str, name: str) -> str:
    """Where dataset ``name`` lives: ``<data_root>/<folder>`` (``{dataset}`` in data_root is filled instead)."""
    folder = suites.DATASETS[name].directory if name in suites.DATASETS else name.replace("/", "_")
    return data_root.replace("{dataset}", folder) if "{dataset}" in data_root else os.path.join(data_root, folder)


def _load_all(names: list[str], encoders: Encoders, config: BenchmarkConfig) -> list[tuple]:
    """Load every dataset (and its train split for the linear probe) before encoding anything.

    All missing datasets are reported in one error, so a long run does not stop at the 18th dataset.
    """
    loaded, errors = [], []
    for name in names:
        root = dataset_root(config.data_root, name)
        try:
            test = ds.load_dataset(name, root, config.split, encoders.transform, config.allow_download)
            if not set(_TASKS_OF[test.task]) & set(config.tasks):
                continue
            train = None
            if "linear_probe" in config.tasks and test.task == "classification" and not test.multilabel:
                train = ds.load_dataset(name, root, "train", encoders.transform, config.allow_download)
            loaded.append((test, train))
        except (FileNotFoundError, ValueError, KeyError) as e:
            errors.append(str(e.args[0] if isinstance(e, KeyError) else e))
    if errors:
        raise ds.DatasetNotFound(f"{len(errors)} dataset(s) cannot be used:\n" + "\n".join(errors))
    return loaded


def benchmark_model(load: Callable[[], Encoders], config: BenchmarkConfig, quiet: bool = False) -> dict[str, object]:
    """Every requested task for one model: statistics first (they include loading), then the datasets."""
    results: dict[str, object] = {}
    if "statistics" in config.tasks:
        results.update(resource_usage(load, device=config.device))
    if not [t for t in config.tasks if t != "statistics"]:
        return results
    encoders = load()
    for test, train in _load_all(suites.expand(list(config.datasets)), encoders, config):
        results.update(evaluate_dataset(encoders, test, config, train, quiet=quiet))
    return results


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """'ARCH' -> (ARCH, None); 'ARCH::TAG' or 'ARCH::path' -> (ARCH, TAG/path); 'hf-hub:org/repo' unchanged."""
    try:
        return split_model_tag(spec)
    except ValueError:
        raise ModelLoadError(f"model spec '{spec}' must look like ARCH, ARCH::TAG or ARCH::path/to/weights") from None


def load_model_encoders(spec: str, device: str = "cpu", precision: str = "fp32") -> Encoders:
    """Build a clipforge model from a spec and wrap it into ``Encoders`` (device moves and autocast included)."""
    name, pretrained = parse_model_spec(spec)
    try:
        from clipforge.models.factory import create_model_and_transforms, get_tokenizer
        model, _, preprocess = create_model_and_transforms(name, pretrained=pretrained, device=device,
                                                           precision=precision)
        tokenizer = get_tokenizer(name)
    except Exception as e:
        raise ModelLoadError(f"cannot load model '{spec}': {type(e).__name__}: {e}. "
                             "Check the name with `clipforge models`, and that the weights file exists.") from e
    model.eval()
    weights = _weights_file(model, pretrained)
    preprocess_config = getattr(model, "preprocess_config", None)
    size = getattr(preprocess_config, "image_size", None) or getattr(getattr(model, "visual", None), "image_size", 224)
    model_id = f"{spec}@{precision}"
    if weights and os.path.isfile(weights):  # retrained weights at the same path must not reuse cached features
        stat = os.stat(weights)
        model_id += f"@{stat.st_size}-{int(stat.st_mtime)}"
    return wrap_model(model, tokenizer, preprocess, model_id, device, precision, weights, size)


def _weights_file(model, pretrained: str | None) -> str | None:
    """The local weights file (or folder) behind a model, for disk usage and cache invalidation."""
    for candidate in (pretrained, getattr(model, "weights_path", None), getattr(model, "pretrained_source", None)):
        if candidate and os.path.exists(str(candidate)):
            return str(candidate)
    return None


def wrap_model(model, tokenizer, preprocess, model_id: str, device: str = "cpu", precision: str = "fp32",
               weights_path: str | None = None, image_size=224) -> Encoders:
    """Encoders around any model with ``encode_image``/``encode_text`` (clipforge's or a reference's)."""
    amp = precision.startswith("amp")
    amp_dtype = torch.bfloat16 if precision.endswith("bf16") else torch.float16
    device_type = torch.device(device).type
    dtype = next(model.parameters()).dtype

    def run(fn, x):
        with torch.no_grad(), torch.autocast(device_type, dtype=amp_dtype, enabled=amp):
            x = x.to(device, non_blocking=True)
            return fn(x if amp or not x.is_floating_point() else x.to(dtype))

    if isinstance(image_size, (tuple, list)):
        image_size = tuple(image_size)
    return Encoders(encode_image=lambda images: run(model.encode_image, images),
                    encode_text=lambda tokens: run(model.encode_text, tokens),
                    tokenize=tokenizer, transform=preprocess, image_size=image_size, model_id=model_id,
                    transform_id=repr(preprocess), weights_path=weights_path)


def run_benchmark(model_specs: Sequence[str], config: BenchmarkConfig, quiet: bool = False,
                  loader: Callable[[str, str, str], Encoders] | None = None) -> dict[str, dict[str, object]]:
    """Results for several models, one entry per spec, in the order given.

    ``loader(spec, device, precision) -> Encoders`` defaults to building clipforge models.
    """
    loader = loader or load_model_encoders
    results = {}
    for spec in model_specs:
        if not quiet:
            print(f"[{spec}]", file=sys.stderr, flush=True)
        results[spec] = benchmark_model(lambda: loader(spec, config.device, config.precision), config, quiet)
    return results
