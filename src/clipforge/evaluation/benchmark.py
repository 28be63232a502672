"""Run the benchmark: models x datasets x tasks -> flat metrics -> tables.

``evaluate(encoders, datasets, config)`` is the Python entry the trainer's evaluation calls: it takes the model's
encode functions and loaded datasets and returns ``{"<dataset>/<metric>": value}``. ``run_benchmark(model_specs,
config)`` adds model loading (any name ``create_model`` takes: ``ARCH``, ``ARCH::TAG``, ``ARCH::path``,
``hf-hub:org/repo``, ``local-dir:PATH``), resource statistics and the feature cache.

Each dataset runs the tasks it supports among those asked for: classification sets ``zeroshot_classification`` and
``linear_probe``, caption sets ``zeroshot_retrieval``, SugarCrepe (``sugar_crepe/<task>``) and Winoground
clip_benchmark's ``image_caption_selection`` (``evaluation.caption_selection``).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Literal, Mapping, Sequence

import torch

from clipforge.evaluation import datasets as ds
from clipforge.evaluation import suites
from clipforge.evaluation.caption_selection import (SelectionSet, load_sugar_crepe, load_winoground, missing_folder,
                                                    score_selection)
from clipforge.evaluation.features import EncodedImages, Encoders, cache_key, cached, encode_images
from clipforge.evaluation.linear_probe import probe_features
from clipforge.evaluation.metrics import check_tie_rule
from clipforge.evaluation.retrieval import retrieve
from clipforge.evaluation.stats import resource_usage
from clipforge.evaluation.zeroshot import build_classifier, classify
from clipforge.precision import get_precision
from clipforge.progress import progress

CACHE_FORMAT = "indices-v2"  # cached targets are dataset indices (older caches held labels: never reuse them)
TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "image_caption_selection", "statistics")
# what a dataset supports (``LoadedDataset.tasks``, ``SelectionSet.tasks``) -> the tasks that run on it
_TASKS_OF = {"classification": ("zeroshot_classification", "linear_probe"), "retrieval": ("zeroshot_retrieval",),
             "caption_selection": ("image_caption_selection",)}
DEFAULT_TASKS = ("zeroshot_classification", "zeroshot_retrieval", "image_caption_selection")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What to run. ``datasets`` may name suites (``vtab``, ``retrieval``, ``classification``).

    ``ties``: how equal scores are ranked (``evaluation.metrics``): "reference" (clip_benchmark's top-k, comparable
    with published tables) or "pessimistic". ``precision``: a ``clipforge.precision`` name (``amp_bf16``...).
    """

    tasks: tuple[str, ...] = DEFAULT_TASKS
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
    ties: Literal["reference", "pessimistic"] = "reference"

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        if self.templates:
            suites.get_templates(self.templates, strict=True)  # a typo must not fall back to other prompts
        get_precision(self.precision)
        check_tie_rule(self.ties)
        if self.batch_size < 1 or self.num_workers < 0 or not self.recall_k or min(self.recall_k) < 1:
            raise ValueError("batch_size and every recall_k must be >= 1, num_workers >= 0")


def make_loader(dataset, batch_size: int, num_workers: int, device: str = "cpu"):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       collate_fn=ds.collate_skipping, pin_memory=device.startswith("cuda"))


def _encode(encoders: Encoders, loaded: ds.LoadedDataset | SelectionSet, split: str, config: BenchmarkConfig,
            quiet: bool) -> EncodedImages:
    """Features of every readable image, with their dataset indices as targets (cached when asked)."""
    path = None
    if config.cache_dir:
        key = cache_key(encoders.model_id, loaded.name, split, encoders.transform_id, len(loaded.dataset),
                        loaded.source, CACHE_FORMAT)
        path = os.path.join(config.cache_dir, key + ".pt")

    def compute():
        loader = make_loader(loaded.dataset, config.batch_size, config.num_workers, config.device)
        with progress(total=len(loaded.dataset), desc=f"{encoders.model_id} {loaded.name}/{split}", unit="img",
                      enabled=not quiet) as bar:
            encoded = encode_images(encoders.encode_image, loader, bar.update)
        return dataclasses.asdict(encoded)

    return EncodedImages(**cached(path, compute))


def _view(encoded: EncodedImages, targets) -> EncodedImages:
    return EncodedImages(encoded.features, targets, encoded.skipped)


def evaluate_dataset(encoders: Encoders, loaded: ds.LoadedDataset | SelectionSet, config: BenchmarkConfig,
                     train: ds.LoadedDataset | None = None, quiet: bool = True) -> dict[str, float]:
    """Metrics of one model on one loaded dataset, keyed ``<dataset>/<metric>``. Images are encoded once for
    every task the dataset supports and the config asks for."""
    out: dict[str, float] = {}
    wanted = [task for task in loaded.tasks if set(_TASKS_OF[task]) & set(config.tasks)]
    if not wanted:
        return out
    encoded = _encode(encoders, loaded, config.split, config, quiet)
    index = encoded.targets.long()
    if "retrieval" in wanted:
        captions = [loaded.captions[i] for i in index.tolist()]
        out.update(retrieve(_view(encoded, captions), encoders.encode_text, encoders.tokenize, config.recall_k,
                            config.ties))
    if "classification" in wanted:
        labels = loaded.labels[index]
        if "zeroshot_classification" in config.tasks:
            templates = suites.get_templates(config.templates, strict=True) if config.templates else loaded.templates
            classifier = build_classifier(encoders.encode_text, encoders.tokenize, loaded.classnames, templates)
            out.update(classify(_view(encoded, labels), classifier, loaded.classnames, config.ties))
        if "linear_probe" in config.tasks and train is not None and not loaded.multilabel:
            train_encoded = _encode(encoders, train, "train", config, quiet)
            train_view = _view(train_encoded, train.labels[train_encoded.targets.long()])
            probe = probe_features(train_view, _view(encoded, labels), len(loaded.classnames))
            out.update({f"linear_probe_{k}": v for k, v in probe.items()})
    if "caption_selection" in wanted:
        out.update(score_selection(encoders, loaded, encoded, config.ties))
    if loaded.shard_errors:
        out["shard_errors"] = loaded.shard_errors
    return {f"{loaded.name}/{k}": v for k, v in out.items()}


def evaluate(encoders: Encoders, loaded: Sequence[ds.LoadedDataset | SelectionSet],
             config: BenchmarkConfig | None = None, quiet: bool = True) -> dict[str, float]:
    """Flat metrics of one model over already loaded datasets (the trainer's evaluation calls this)."""
    config = config or BenchmarkConfig()
    results: dict[str, float] = {}
    for item in loaded:
        results.update(evaluate_dataset(encoders, item, config, quiet=quiet))
    return results


def dataset_root(data_root: str, name: str) -> str:
    """Where dataset ``name`` lives: ``<data_root>/<folder>`` (``{dataset}`` in data_root is filled instead)."""
    folder = suites.DATASETS[name].directory if name in suites.DATASETS else name.replace("/", "_")
    return data_root.replace("{dataset}", folder) if "{dataset}" in data_root else os.path.join(data_root, folder)


def _wanted(tasks: Sequence[str], config: BenchmarkConfig) -> bool:
    return any(set(_TASKS_OF[t]) & set(config.tasks) for t in tasks)


def load_datasets(names: Sequence[str], config: BenchmarkConfig, transform: Callable | None,
                  ) -> list[tuple[ds.LoadedDataset | SelectionSet, ds.LoadedDataset | None]]:
    """Load every dataset (and its train split for the linear probe) before encoding anything.

    All unusable datasets are reported in one error, so a long run does not stop at the 18th dataset; a missing
    SugarCrepe folder is one line for all its tasks.
    """
    loaded, errors = [], []
    missing_selection: dict[str, list[str]] = {}  # SugarCrepe folder not there -> its tasks asked for
    for name in suites.expand(list(names)):
        try:
            request = ds.parse_dataset(name)
            root = request.path or dataset_root(config.data_root, name)
            if request.spec.task == "caption_selection":
                if not _wanted(("caption_selection",), config):
                    continue
                if name == "winoground":
                    loaded.append((load_winoground(root, transform, config.split), None))
                    continue
                if not os.path.isdir(root):
                    missing_selection.setdefault(root, []).append(name)
                    continue
                loaded.append((load_sugar_crepe(name.partition("/")[2], root, transform, config.split), None))
                continue
            test = ds.load_dataset(name, root, config.split, transform, config.allow_download)
            if not _wanted(test.tasks, config):
                continue
            train = None
            if "linear_probe" in config.tasks and "classification" in test.tasks and not test.multilabel:
                train = ds.load_dataset(name, root, "train", transform, config.allow_download)
            loaded.append((test, train))
        except (FileNotFoundError, ValueError, KeyError) as e:
            errors.append(str(e.args[0] if isinstance(e, KeyError) else e))
    errors += [missing_folder(root, tasks, config.allow_download) for root, tasks in missing_selection.items()]
    if len(errors) == 1:
        raise ds.DatasetNotFound(errors[0])
    if errors:
        raise ds.DatasetNotFound(f"{len(errors)} dataset(s) cannot be used:\n" + "\n".join(errors))
    return loaded


def _measure_in_child(spec: str, device: str, precision: str, queue) -> None:
    try:
        queue.put(("ok", resource_usage(lambda: load_model_encoders(spec, device, precision), device=device)))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it with the model's name
        queue.put(("error", f"{type(e).__name__}: {e}"))


def isolated_resource_usage(spec: str, device: str = "cpu", precision: str = "fp32") -> dict[str, object]:
    """``resource_usage`` of a clipforge model measured in a fresh process: peak RAM is then the model's own, not
    what earlier models of the same run left in this process's allocator (the seed's per-model figures)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_measure_in_child, args=(spec, device, precision, queue), daemon=True)
    child.start()
    try:
        status, value = _wait_for(child, queue)
    finally:
        if child.is_alive():
            child.terminate()
        child.join(timeout=60)
    if status != "ok":
        raise RuntimeError(f"measuring the statistics of '{spec}' failed: {value}")
    return value


def _wait_for(child, queue, timeout: float = 3600.0) -> tuple[str, object]:
    """The child's report; a child that dies (killed for memory, crashed) is reported at once, not after the
    timeout."""
    import queue as queues

    waited = 0.0
    while waited < timeout:
        try:
            return queue.get(timeout=1.0)
        except queues.Empty:
            waited += 1.0
            if not child.is_alive():
                return "error", f"the measuring process ended with exit code {child.exitcode} without a result"
    return "error", f"no result after {timeout:.0f} s"


def benchmark_model(load: Callable[[], Encoders], config: BenchmarkConfig, quiet: bool = False,
                    measure: Callable[[], dict] | None = None) -> dict[str, object]:
    """Every requested task for one model: statistics first (they include loading), then the datasets.
    ``measure()`` replaces the in-process statistics (``isolated_resource_usage`` for clipforge models)."""
    results: dict[str, object] = {}
    if "statistics" in config.tasks:
        results.update(measure() if measure is not None else resource_usage(load, device=config.device))
    if not [t for t in config.tasks if t != "statistics"]:
        return results
    encoders = load()
    for test, train in load_datasets(config.datasets, config, encoders.transform):
        results.update(evaluate_dataset(encoders, test, config, train, quiet=quiet))
    return results


def load_model_encoders(spec: str, device: str = "cpu", precision: str = "fp32") -> Encoders:
    """Build a clipforge model from any name ``create_model`` takes and wrap it into ``Encoders``."""
    from clipforge.models.factory import create_model_and_transforms, get_tokenizer

    cast = get_precision(precision)
    model, _, preprocess = create_model_and_transforms(spec, device=device, precision=cast.name)
    tokenizer = get_tokenizer(spec)
    weights = model.info.weights_path
    model_id = f"{spec}@{cast.name}"
    if weights and os.path.isfile(weights):  # retrained weights at the same path must not reuse cached features
        stat = os.stat(weights)
        model_id += f"@{stat.st_size}-{int(stat.st_mtime)}"
    weights_dir = os.path.dirname(weights) if weights and spec.startswith("local-dir:") else weights
    return make_encoders(model, tokenizer, preprocess, model_id, device, cast.name, weights_dir,
                         model.preprocess_config.image_size)


def make_encoders(model, tokenizer, preprocess, model_id: str, device: str = "cpu", precision: str = "fp32",
                  weights_path: str | None = None, image_size=224) -> Encoders:
    """Encoders around any model with ``encode_image``/``encode_text`` (clipforge's or a reference's): inputs are
    moved to ``device`` and cast to the weights' dtype, or run under autocast for AMP precisions."""
    cast = get_precision(precision)
    device_type = torch.device(device).type
    dtype = next(model.parameters()).dtype

    def run(fn, x):
        with torch.no_grad(), cast.autocast_context(device_type):
            x = x.to(device, non_blocking=True)
            return fn(x if cast.is_amp or not x.is_floating_point() else x.to(dtype))

    if isinstance(image_size, (tuple, list)):
        image_size = tuple(image_size)
    return Encoders(encode_image=lambda images: run(model.encode_image, images),
                    encode_text=lambda tokens: run(model.encode_text, tokens),
                    tokenize=tokenizer, transform=preprocess, image_size=image_size, model_id=model_id,
                    transform_id=repr(preprocess), weights_path=weights_path)


def run_benchmark(model_specs: Sequence[str], config: BenchmarkConfig, quiet: bool = False,
                  loader: Callable[[str, str, str], Encoders] | None = None,
                  prefixed_loaders: Mapping[str, Callable[[str, str, str], Encoders]] | None = None,
                  ) -> dict[str, dict[str, object]]:
    """Results for several models, one entry per spec, in the order given.

    ``loader(spec, device, precision) -> Encoders`` defaults to building clipforge models (their statistics are
    measured in a child process); ``prefixed_loaders`` maps a spec prefix (``"onnx:"``) to the loader of such
    specs, whose statistics are measured in this process.
    """
    results = {}
    for spec in model_specs:
        if not quiet:
            print(f"[{spec}]", file=sys.stderr, flush=True)
        custom = loader or next((f for prefix, f in (prefixed_loaders or {}).items() if spec.startswith(prefix)),
                                None)
        measure = (lambda: isolated_resource_usage(spec, config.device, config.precision)) if custom is None else None
        load = custom or load_model_encoders
        results[spec] = benchmark_model(lambda: load(spec, config.device, config.precision), config, quiet, measure)
    return results
