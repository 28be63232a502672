"""WebDataset training pipeline throughput: clipforge against open_clip_train, same shards, same run.

Both sides use open_clip's training image transform (224 px, RandomResizedCrop) and its ViT-B-32 tokenizer,
so only the pipeline differs. Shards are generated with the quickstart shapes generator at 256 px.

open_clip_train 3.3.0 targets webdataset 0.2.x. Two shims make its own ``get_wds_dataset`` run here, both
printed with the results: a stand-in for ``pandas`` (imported by data.py for CSV only, not installed), and
dropping the end-of-shard marker ``{}`` that webdataset 1.x's ``tar_file_expander`` yields and open_clip's
``group_by_keys_nothrow`` cannot handle (it raises ``KeyError: 'fname'`` without the shim).

Run: python benchmarks/bench_data.py [--samples 1024] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import gc
import importlib.machinery
import resource
import sys
import tempfile
import time
import types


def _import_open_clip_train():
    import open_clip  # noqa: F401  (imported first so torch's module scan never sees the stand-in)

    if "pandas" not in sys.modules:
        try:
            import pandas  # noqa: F401
        except ImportError:
            stub = types.ModuleType("pandas")
            stub.__spec__ = importlib.machinery.ModuleSpec("pandas", None)
            sys.modules["pandas"] = stub
    import open_clip_train.data as oc_data

    original = oc_data.tar_file_expander

    def without_eof_markers(*args, **kwargs):
        return (sample for sample in original(*args, **kwargs) if sample)

    oc_data.tar_file_expander = without_eof_markers
    return oc_data


def _cpu_seconds() -> float:
    self_usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_usage.ru_utime + self_usage.ru_stime + children.ru_utime + children.ru_stime


def _time_epoch(make_loader) -> tuple[int, float, float, float]:
    """(samples, wall s, CPU s of this process and its finished workers, wall s to the first batch)."""
    cpu0, start = _cpu_seconds(), time.perf_counter()
    loader = make_loader()
    first, count = None, 0
    for images, tokens in loader:
        count += images.shape[0]
        if first is None:
            first = time.perf_counter() - start
    wall = time.perf_counter() - start
    del loader
    gc.collect()  # joins persistent workers so their CPU time is counted
    return count, wall, _cpu_seconds() - cpu0, first


def _open_clip_loader(oc_data, spec, samples, batch_size, workers, transform, tokenizer):
    args = argparse.Namespace(train_data=spec, val_data=None, dataset_resampled=False, train_num_samples=samples,
                              train_data_upsampling_factors=None, seed=0, batch_size=batch_size, workers=workers,
                              world_size=1)
    return oc_data.get_wds_dataset(args, transform, is_train=True, epoch=0, tokenizer=tokenizer).dataloader


def _clipforge_loader(spec, batch_size, workers, transform, tokenizer, start_batch=0):
    from clipforge.training.data import DataConfig, create_train_loader

    cfg = DataConfig(kind="webdataset", train=spec, batch_size=batch_size, workers=workers, shuffle_buffer=1000)
    return create_train_loader(cfg, image_transform=transform, tokenize=tokenizer, start_batch=start_batch)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args(argv)

    import open_clip
    import torch

    from clipforge.training.shapes import generate_shapes_dataset

    torch.set_num_threads(1)
    oc_data = _import_open_clip_train()
    transform = open_clip.image_transform(224, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as folder:
        start = time.perf_counter()
        info = generate_shapes_dataset(folder, opts.samples, 0, image_size=opts.image_size,
                                       shard_size=max(1, opts.samples // 8))
        print(f"generated {opts.samples} shapes images ({opts.image_size} px, 8 shards) in "
              f"{time.perf_counter() - start:.2f}s")
        rows = _measure(oc_data, info["train"], opts, transform, tokenizer)
        _print_table(rows)
        _report_resume(info["train"], opts, transform, tokenizer)


def _measure(oc_data, spec, opts, transform, tokenizer) -> dict:
    rows = {}
    for _ in range(opts.repeats):  # alternate the two sides so background load hits both alike
        for workers in (0, 2):
            makers = {
                "open_clip_train": lambda: _open_clip_loader(oc_data, spec, opts.samples, opts.batch_size, workers,
                                                             transform, tokenizer),
                "clipforge": lambda: _clipforge_loader(spec, opts.batch_size, workers, transform, tokenizer),
            }
            for name, make in makers.items():
                result = _time_epoch(make)
                best = rows.get((name, workers))
                rows[(name, workers)] = result if best is None or result[1] < best[1] else best
    return rows


def _print_table(rows: dict) -> None:
    print(f"\n{'pipeline':<16} {'workers':>7} {'samples':>8} {'wall s':>7} {'samples/s':>10} {'CPU s':>6} "
          f"{'CPU ms/sample':>14} {'first batch s':>14}  ratio (wall, CPU) vs open_clip")
    order = sorted(rows, key=lambda key: (key[1], key[0] != "open_clip_train"))  # reference first per workers
    for name, workers in order:
        count, wall, cpu, first = rows[(name, workers)]
        ref = rows[("open_clip_train", workers)]
        ratio = f"  x{(count / wall) / (ref[0] / ref[1]):.2f}, x{(ref[2] / ref[0]) / (cpu / count):.2f}" \
            if name == "clipforge" else ""
        print(f"{name:<16} {workers:>7} {count:>8} {wall:>7.2f} {count / wall:>10.1f} {cpu:>6.2f} "
              f"{1000 * cpu / count:>14.2f} {first:>14.2f}{ratio}")
    print("ratios > 1 mean clipforge is faster (throughput) / cheaper (CPU per sample); best wall time of the repeats")


def _report_resume(spec, opts, transform, tokenizer) -> None:
    """How long a resumed loader takes to deliver its first batch (skipping replays raw bytes only)."""
    num_batches = _clipforge_loader(spec, opts.batch_size, 0, transform, tokenizer).num_batches
    start_batch = num_batches - 2
    count, wall, cpu, first = _time_epoch(
        lambda: _clipforge_loader(spec, opts.batch_size, 0, transform, tokenizer, start_batch=start_batch))
    print(f"\nclipforge resume at batch {start_batch}/{num_batches} (workers=0): first batch after {first:.2f}s, "
          f"{count} samples in {wall:.2f}s ({cpu:.2f} CPU s)")


if __name__ == "__main__":
    main()
